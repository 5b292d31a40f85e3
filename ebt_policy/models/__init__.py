"""Networks and what they need to read data: per-frame observation encoders, the energy models
(transformer and MLP), the normaliser and the shape description. Nothing here imports the episode
store (``ebt_policy.datasets``)."""

from __future__ import annotations

from ebt_policy.models.mlp_energy import MLPEnergy
from ebt_policy.models.normalizer import STAT_NAMES, Normalizer
from ebt_policy.models.obs_encoder import FrameEncoder
from ebt_policy.models.resnet import ImageEncoder, ResNet18GN, SpatialSoftmax
from ebt_policy.models.shapes import ObsFeature, ShapeMeta, is_rgb_key
from ebt_policy.models.transformer import Attention, TransformerEnergy, sinusoidal_positions

__all__ = [
    "Attention",
    "FrameEncoder",
    "ImageEncoder",
    "MLPEnergy",
    "Normalizer",
    "ObsFeature",
    "ResNet18GN",
    "STAT_NAMES",
    "ShapeMeta",
    "SpatialSoftmax",
    "TransformerEnergy",
    "is_rgb_key",
    "sinusoidal_positions",
]
