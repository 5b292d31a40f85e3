"""MSE regression baseline: the EBT backbone, one forward pass, the chunk regressed directly."""

from __future__ import annotations

from ebt_policy.policies.mse.configuration import BACKBONES, MSEPolicyConfig
from ebt_policy.policies.mse.modeling import MSEPolicy
from ebt_policy.policies.mse.presets import MSE_PRESETS

__all__ = ["BACKBONES", "MSE_PRESETS", "MSEPolicy", "MSEPolicyConfig"]
