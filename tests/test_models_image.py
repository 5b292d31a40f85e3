"""Image encoder: ResNet-18 definition with GroupNorm, keypoints, augmentation in training only."""

from __future__ import annotations

import torch
from torch import nn

from ebt_policy.models import FrameEncoder, ImageEncoder, ResNet18GN, SpatialSoftmax
from ebt_policy.models.resnet import center_crop, color_jitter, random_crop

torch.set_num_threads(1)


def test_resnet18_matches_torchvision_parameter_count_and_uses_groupnorm():
    trunk = ResNet18GN(3, width=64)
    # torchvision resnet18 has 11,689,512 parameters, of which the fc classifier is 513,000; its
    # BatchNorm layers have the same affine parameters as our GroupNorms.
    assert sum(p.numel() for p in trunk.parameters()) == 11_689_512 - 513_000
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trunk.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in trunk.modules()) == 20
    assert trunk(torch.randn(1, 3, 76, 76)).shape == (1, 512, 3, 3)


def test_spatial_softmax_finds_the_peak():
    layer = SpatialSoftmax(1, 1)
    with torch.no_grad():
        layer.to_keypoints.weight.fill_(1.0)
        layer.to_keypoints.bias.zero_()
    maps = torch.zeros(1, 1, 5, 7)
    maps[0, 0, 4, 0] = 100.0  # bottom-left corner
    torch.testing.assert_close(layer(maps), torch.tensor([[-1.0, 1.0]]), atol=1e-4, rtol=0)


def test_random_crop_takes_real_windows_and_center_crop_is_central():
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    crops = random_crop(img, 8, 9, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 8, 9)
    for n in range(2):
        top = int((crops[n, 0, 0, 0] - img[n, 0, 0, 0]) // 12)
        left = int((crops[n, 0, 0, 0] - img[n, 0, 0, 0]) % 12)
        torch.testing.assert_close(crops[n], img[n, :, top : top + 8, left : left + 9])
    torch.testing.assert_close(center_crop(img, 8, 10), img[..., 1:9, 1:11])


def test_color_jitter_stays_in_range_and_changes_images():
    img = torch.rand(4, 3, 8, 8) * 2 - 1
    out = color_jitter(img, 0.3, generator=torch.Generator().manual_seed(0))
    assert out.min() >= -1 and out.max() <= 1
    assert (out - img).abs().mean() > 1e-3


def test_augmentation_only_when_training_and_eval_is_batch_independent():
    torch.manual_seed(0)
    enc = ImageEncoder((3, 48, 48), width=8, n_keypoints=4, out_dim=16, crop_fraction=0.9)
    img = torch.rand(3, 3, 48, 48) * 2 - 1
    a, b = enc(img), enc(img)
    torch.testing.assert_close(a, b)  # eval path is deterministic (centre crop, no jitter)
    torch.testing.assert_close(enc(img[1:2]), a[1:2], atol=1e-5, rtol=1e-5)  # GroupNorm: per sample
    assert (enc(img, augment=True) - enc(img, augment=True)).abs().max() > 1e-6


def test_frame_encoder_combines_cameras_and_low_dim_keys_per_frame():
    torch.manual_seed(0)
    enc = FrameEncoder(
        {"pos": (3,), "quat": (4,)},
        {"agentview_image": (3, 48, 48), "wrist_image": (3, 48, 48)},
        image_feature_dim=8,
        resnet_width=8,
        n_keypoints=4,
    )
    assert enc.out_dim == 3 + 4 + 2 * 8
    obs = {
        "pos": torch.randn(2, 2, 3),
        "quat": torch.randn(2, 2, 4),
        "agentview_image": torch.rand(2, 2, 3, 48, 48),
        "wrist_image": torch.rand(2, 2, 3, 48, 48),
    }
    out = enc(obs)
    assert out.shape == (2, 2, enc.out_dim)
    torch.testing.assert_close(out[..., :3], obs["pos"])  # low-dim keys pass through, in order
    obs2 = dict(obs, wrist_image=obs["wrist_image"].flip(-1))
    changed = (enc(obs2) - out).abs().amax(dim=(0, 1))
    assert changed[:15].max() == 0 and changed[15:].max() > 0  # only the wrist camera's slice
