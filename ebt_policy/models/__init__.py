"""Networks: per-frame observation encoders and the energy models (transformer and MLP)."""

from __future__ import annotations

from ebt_policy.models.mlp_energy import MLPEnergy
from ebt_policy.models.obs_encoder import FrameEncoder
from ebt_policy.models.resnet import ImageEncoder, ResNet18GN, SpatialSoftmax
from ebt_policy.models.transformer import Attention, TransformerEnergy, sinusoidal_positions

__all__ = [
    "Attention",
    "FrameEncoder",
    "ImageEncoder",
    "MLPEnergy",
    "ResNet18GN",
    "SpatialSoftmax",
    "TransformerEnergy",
    "sinusoidal_positions",
]
