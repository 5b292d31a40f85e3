"""MSE presets: EBT's presets (policies/ebt/presets.py) with the same names, sizes and training
recipes, built from them, so ``--policy mse --preset P`` is the control for ``--policy ebt
--preset P`` whatever EBT's presets become."""

from __future__ import annotations

from ebt_policy.policies.chunk_policy import presets_from_ebt
from ebt_policy.policies.factory import Preset
from ebt_policy.policies.mse.configuration import MSEPolicyConfig

MSE_PRESETS: dict[str, Preset] = presets_from_ebt(MSEPolicyConfig, "backbone")
