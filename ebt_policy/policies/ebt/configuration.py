"""EBTPolicyConfig: the EBT-Policy recipe as plain, JSON-able fields, validated on construction.

:func:`ebt_policy.policies.make_policy_config` fills it from a preset (``policies/ebt/presets.py``);
the energy-descent settings are one nested :class:`DescentConfig` (``cfg.descent.alpha``), the same
object the descent itself runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebt_policy.policies.ebt.descent import DescentConfig
from ebt_policy.policies.validation import (
    check_types,
    check_window_and_images,
    nested_config,
    require,
)

ENERGY_KINDS = ("transformer", "mlp")


@dataclass
class EBTPolicyConfig:
    """Everything that defines an EBT policy. Sizes are configuration (see the presets)."""

    name: str = "ebt"
    preset: str = "custom"  # the preset this config started from (informational)
    # --- shapes (method.md: To=2, Tp=16, Ta=8); horizon is the chunk length Tp
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    # --- energy network
    energy: str = "transformer"  # "transformer" | "mlp"
    d_model: int = 64
    n_heads: int = 4
    n_obs_layers: int = 1
    n_energy_layers: int = 2
    ffn_mult: int = 4
    mlp_hidden: int = 256  # MLP energy: width and number of SiLU hidden layers
    mlp_layers: int = 3
    # --- image encoder (used when the observations include cameras)
    image_feature_dim: int = 64
    resnet_width: int = 64  # 64 = the real ResNet-18
    n_keypoints: int = 32
    crop_fraction: float = 0.9  # training random crop (84 -> 76), centre crop at inference
    color_jitter: float = 0.2  # brightness / contrast / saturation strength, training only
    # --- energy descent, shared by training and inference (a dict of its fields is accepted)
    descent: DescentConfig = field(default_factory=DescentConfig)
    # Inference may use fused attention kernels (first-order gradients only); training never does.
    fused_attention_inference: bool = True

    def __post_init__(self) -> None:
        where = "policy config"
        check_types(self, where)
        self.descent = nested_config(DescentConfig, self.descent, f"{where}: descent")

        def need(ok: bool, what: str) -> None:
            require(ok, where, what)

        need(self.name == "ebt", f"name must be 'ebt', got {self.name!r}")
        need(
            self.energy in ENERGY_KINDS,
            f"energy must be one of {ENERGY_KINDS}, got {self.energy!r}",
        )
        check_window_and_images(self, need)
        for key in ("d_model", "n_heads", "ffn_mult", "mlp_hidden", "mlp_layers"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_obs_layers", "n_energy_layers"):
            need(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")
        need(
            self.d_model % self.n_heads == 0,
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
