"""MSEPolicyConfig: the regression baseline's fields, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ebt_policy.policies.chunk_policy import BackboneConfig
from ebt_policy.policies.validation import require

BACKBONES = ("transformer", "mlp")


@dataclass
class MSEPolicyConfig(BackboneConfig):
    """The MSE baseline: EBT's observation side and sizes, a decoder instead of an energy.

    ``backbone="transformer"``: one learned query token per action, ``n_layers`` blocks of
    self-attention, cross-attention to the observation tokens and feed-forward (EBT's energy
    blocks), a per-token head to Da. ``backbone="mlp"``: an MLP from the flattened observation
    window to the flattened chunk, sized like EBT's MLP energy.
    """

    name: str = "mse"
    backbone: str = "transformer"  # "transformer" | "mlp"

    def __post_init__(self) -> None:
        self.check_backbone("mse")
        require(
            self.backbone in BACKBONES,
            "mse policy config",
            f"backbone must be one of {BACKBONES}, got {self.backbone!r}",
        )
