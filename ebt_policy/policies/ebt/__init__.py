"""EBT-Policy: configuration, modeling, the energy descent it trains and plans with, presets."""

from __future__ import annotations

from ebt_policy.policies.ebt.configuration import ENERGY_KINDS, EBTPolicyConfig
from ebt_policy.policies.ebt.descent import (
    RMS_NORM_MODES,
    DescentConfig,
    DescentResult,
    EnergyDescent,
    NonFiniteEnergyError,
    cosine_sigmas,
)
from ebt_policy.policies.ebt.modeling import EBTPolicy
from ebt_policy.policies.ebt.presets import EBT_PRESETS

__all__ = [
    "EBT_PRESETS",
    "ENERGY_KINDS",
    "RMS_NORM_MODES",
    "DescentConfig",
    "DescentResult",
    "EBTPolicy",
    "EBTPolicyConfig",
    "EnergyDescent",
    "NonFiniteEnergyError",
    "cosine_sigmas",
]
