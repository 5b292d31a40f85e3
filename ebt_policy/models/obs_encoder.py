"""Per-frame observation features: low-dim keys concatenated, plus image features per camera.

Input is already normalised (low-dim in [-1, 1], images float in [-1, 1], channels first). Output
is one feature vector per frame, (B, To, F), which the energy models project to their width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebt_policy.models.resnet import ImageEncoder


class FrameEncoder(nn.Module):
    """Observation dict -> per-frame features (B, To, F).

    ``low_dim_shapes`` and ``rgb_shapes`` map keys to per-frame shapes; rgb shapes are (C, H, W).
    Each camera has its own image encoder (cameras see different things).
    """

    def __init__(
        self,
        low_dim_shapes: dict[str, tuple[int, ...]],
        rgb_shapes: dict[str, tuple[int, int, int]],
        image_feature_dim: int = 64,
        resnet_width: int = 64,
        n_keypoints: int = 32,
        crop_fraction: float = 0.9,
        color_jitter: float = 0.2,
    ) -> None:
        super().__init__()
        if not low_dim_shapes and not rgb_shapes:
            raise ValueError("FrameEncoder needs at least one observation key")
        self.low_dim_keys = list(low_dim_shapes)
        self.rgb_keys = list(rgb_shapes)
        self.low_dim_dim = sum(math.prod(s) for s in low_dim_shapes.values())
        self.images = nn.ModuleDict(
            {
                key: ImageEncoder(
                    shape, resnet_width, n_keypoints, image_feature_dim, crop_fraction, color_jitter
                )
                for key, shape in rgb_shapes.items()
            }
        )
        self.out_dim = self.low_dim_dim + image_feature_dim * len(self.rgb_keys)

    def forward(self, obs: dict[str, Tensor], augment: bool = False) -> Tensor:
        """``obs[key]``: (B, To, ...) normalised. Returns (B, To, F)."""
        parts = []
        B, To = obs[(self.low_dim_keys + self.rgb_keys)[0]].shape[:2]
        for key in self.low_dim_keys:
            parts.append(obs[key].reshape(B, To, -1))  # (B, To, d_key)
        for key in self.rgb_keys:
            img = obs[key].flatten(0, 1)  # (B*To, C, H, W)
            feats = self.images[key](img, augment=augment)  # (B*To, F_img)
            parts.append(feats.view(B, To, -1))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
