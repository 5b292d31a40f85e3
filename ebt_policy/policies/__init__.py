"""Policies: the policy interface, the registry of policies and their presets, checkpoints.

```python
cfg = make_policy_config("ebt", preset="mlp", descent={"descent_steps": 20})
policy = make_policy(cfg, shape_meta, stats)
```

One folder per policy (``policies/ebt/``: configuration, modeling, descent, presets) and one
``register_policy`` line below for each.
"""

from __future__ import annotations

from ebt_policy.policies.base import ChunkPrediction, Policy
from ebt_policy.policies.checkpoint import load_policy, save_pretrained
from ebt_policy.policies.diffusion import (
    DIFFUSION_PRESETS,
    DIFFUSION_UNET_PRESETS,
    DiffusionPolicy,
    DiffusionPolicyConfig,
    DiffusionUnetPolicy,
    DiffusionUnetPolicyConfig,
)
from ebt_policy.policies.ebt import (
    EBT_PRESETS,
    DescentConfig,
    EBTPolicy,
    EBTPolicyConfig,
    EnergyDescent,
    NonFiniteEnergyError,
)
from ebt_policy.policies.factory import (
    Preset,
    TrainRecipe,
    get_preset,
    make_policy,
    make_policy_config,
    policy_config_from_dict,
    policy_names,
    register_policy,
)
from ebt_policy.policies.mse import MSE_PRESETS, MSEPolicy, MSEPolicyConfig

register_policy("ebt", EBTPolicyConfig, EBTPolicy, EBT_PRESETS)
register_policy("mse", MSEPolicyConfig, MSEPolicy, MSE_PRESETS)
register_policy("diffusion", DiffusionPolicyConfig, DiffusionPolicy, DIFFUSION_PRESETS)
register_policy(
    "diffusion-unet", DiffusionUnetPolicyConfig, DiffusionUnetPolicy, DIFFUSION_UNET_PRESETS
)

__all__ = [
    "ChunkPrediction",
    "DescentConfig",
    "EBTPolicy",
    "EBTPolicyConfig",
    "EnergyDescent",
    "NonFiniteEnergyError",
    "Policy",
    "Preset",
    "TrainRecipe",
    "get_preset",
    "load_policy",
    "make_policy",
    "make_policy_config",
    "policy_config_from_dict",
    "policy_names",
    "register_policy",
    "save_pretrained",
]
