"""Image encoder: ResNet-18 trunk with GroupNorm, spatial-softmax keypoints, linear to features.

The trunk follows torchvision's ResNet-18 definition (7x7 stride-2 stem, 3x3 max-pool, four stages
of two BasicBlocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, 1x1 projection shortcuts),
written here because torchvision cannot be installed beside our torch build. BatchNorm is replaced
by GroupNorm (channels // 16 groups, as Diffusion Policy does) so that EMA weights and batch-1
inference behave the same as training. The pooling head and classifier are replaced by spatial
softmax keypoints. ``width`` scales every stage, so tests can build a small trunk; width=64 is the
real ResNet-18 (11.2M trunk parameters).

Augmentation (random crop and colour jitter) runs only when asked (training); evaluation takes the
centre crop so that train and test images have the same size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt_policy.errors import ConfigError


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _group_norm(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18GN(nn.Module):
    """ResNet-18 feature trunk (no pooling, no classifier) with GroupNorm. (N,C,H,W)->(N,8w,h,w)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            _group_norm(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        in_ch = width
        for i, stride in enumerate((1, 2, 2, 2)):
            out_ch = width * 2**i
            stages.append(
                nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))
            )
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints: 1x1 conv to K maps, softmax over pixels, expected (x, y) in [-1, 1] -> (N, 2K)."""

    def __init__(self, in_channels: int, n_keypoints: int) -> None:
        super().__init__()
        self.to_keypoints = nn.Conv2d(in_channels, n_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.to_keypoints(x)  # (N, K, h, w)
        N, K, h, w = maps.shape
        probs = maps.flatten(2).softmax(dim=-1)  # (N, K, h*w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=probs.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=probs.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (probs * grid_x.reshape(1, 1, -1)).sum(-1)  # (N, K)
        ey = (probs * grid_y.reshape(1, 1, -1)).sum(-1)  # (N, K)
        return torch.cat([ex, ey], dim=-1)  # (N, 2K)


def trunk_output_size(n: int) -> int:
    """Spatial size after the ResNet-18 trunk (stride 32 overall) for an input of size n."""
    n = (n - 1) // 2 + 1  # 7x7 stride-2 conv, padding 3
    for _ in range(4):  # 3x3 stride-2 max-pool, then the three stride-2 stages
        n = (n - 1) // 2 + 1
    return n


def random_crop(
    images: Tensor, crop_h: int, crop_w: int, generator: torch.Generator | None = None
) -> Tensor:
    """Independent random crop of each image. (N, C, H, W) -> (N, C, crop_h, crop_w)."""
    N, C, H, W = images.shape
    dev = images.device
    oy = torch.randint(0, H - crop_h + 1, (N,), device=dev, generator=generator)
    ox = torch.randint(0, W - crop_w + 1, (N,), device=dev, generator=generator)
    rows = oy[:, None] + torch.arange(crop_h, device=dev)  # (N, crop_h)
    cols = ox[:, None] + torch.arange(crop_w, device=dev)  # (N, crop_w)
    n_idx = torch.arange(N, device=dev)[:, None, None]
    # Advanced indexing gives (N, crop_h, crop_w, C); back to (N, C, crop_h, crop_w).
    return images.permute(0, 2, 3, 1)[n_idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def center_crop(images: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """(N, C, H, W) -> (N, C, crop_h, crop_w) from the centre."""
    H, W = images.shape[-2:]
    top, left = (H - crop_h) // 2, (W - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


def color_jitter(
    images: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """Random brightness, contrast and saturation per image, for images in [-1, 1]. (N, C, H, W)."""
    N = images.shape[0]
    dev, dt = images.device, images.dtype

    def factor() -> Tensor:
        u = torch.rand(N, 1, 1, 1, device=dev, generator=generator).to(dt)
        return 1.0 + strength * (2.0 * u - 1.0)  # uniform in [1 - s, 1 + s]

    x = (images + 1.0) * 0.5  # [0, 1]
    x = x * factor()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    if x.shape[1] == 3:
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (N, 1, H, W)
        x = (x - gray) * factor() + gray  # saturation
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


class ImageEncoder(nn.Module):
    """One camera: (N, C, H, W) in [-1, 1] -> (N, out_dim) features."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        n_keypoints: int = 32,
        out_dim: int = 64,
        crop_fraction: float = 0.9,
        color_jitter: float = 0.2,
    ) -> None:
        super().__init__()
        C, H, W = image_shape
        self.crop_h = max(1, round(H * crop_fraction))
        self.crop_w = max(1, round(W * crop_fraction))
        self.jitter = color_jitter
        fh, fw = trunk_output_size(self.crop_h), trunk_output_size(self.crop_w)
        if fh * fw < 2:
            # A 1x1 feature map makes every spatial-softmax keypoint the same constant.
            raise ConfigError(
                f"images of {H}x{W} (crop {self.crop_h}x{self.crop_w}) are too small for the "
                f"ResNet-18 trunk: its feature map would be {fh}x{fw}; use at least 40x40"
            )
        self.trunk = ResNet18GN(C, width)
        self.keypoints = SpatialSoftmax(self.trunk.out_channels, n_keypoints)
        self.proj = nn.Linear(2 * n_keypoints, out_dim)

    def forward(self, images: Tensor, augment: bool = False) -> Tensor:
        if augment:
            images = random_crop(images, self.crop_h, self.crop_w)
            if self.jitter > 0:
                images = color_jitter(images, self.jitter)
        else:
            images = center_crop(images, self.crop_h, self.crop_w)
        return self.proj(self.keypoints(self.trunk(images)))
