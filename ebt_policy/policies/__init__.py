"""Policies: EBT-Policy, its energy descent, presets and the receding-horizon action queue.

```python
cfg = make_policy_config("ebt", preset="mlp", max_steps=20)
policy = make_policy(cfg, shape_meta, stats)
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ebt_policy.errors import ConfigError
from ebt_policy.policies.base import ChunkPrediction, Policy
from ebt_policy.policies.descent import DescentConfig, EnergyDescent, NonFiniteEnergyError
from ebt_policy.policies.ebt import EBTPolicy, EBTPolicyConfig

# Presets: the fields that differ from EBTPolicyConfig's defaults. Every preset plans with the
# paper's 2 descent steps. Measured (README, Results): on low-dim Lift a third step helps (47-50/50
# -> 50/50), on the multimodal twogoal task it hurts (45-47/50 -> 28-38/50: further descent pulls
# the chunk off its mode), so the default stays 2; `ebt-policy eval --descent-steps` overrides it.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ebt": {
        # Tests and CPU quickstarts with the transformer: ~0.2M parameters (low-dim).
        "tiny": dict(
            energy="transformer", d_model=64, n_heads=4, n_obs_layers=1, n_energy_layers=1,
            resnet_width=8, n_keypoints=16, train_steps_base=3, train_steps_extra=1,
        ),
        "small": dict(
            energy="transformer", d_model=128, n_heads=4, n_obs_layers=2, n_energy_layers=2,
            resnet_width=32,
        ),
        # The paper's model: d=256, 8 + 8 layers, 4 heads, full ResNet-18.
        "paper": dict(
            energy="transformer", d_model=256, n_heads=4, n_obs_layers=8, n_energy_layers=8,
            resnet_width=64,
        ),
        # The cheap MLP energy (method.md, last section): 3 x 256 SiLU, 3 unrolled steps.
        "mlp": dict(
            energy="mlp", mlp_hidden=256, mlp_layers=3, train_steps_base=3, train_steps_extra=0,
            resnet_width=32,
        ),
    },
}  # fmt: skip

CONFIG_CLASSES: dict[str, type] = {"ebt": EBTPolicyConfig}
POLICY_CLASSES: dict[str, type] = {"ebt": EBTPolicy}


def _known(name: str) -> None:
    if name not in CONFIG_CLASSES:
        raise ConfigError(f"unknown policy {name!r}; known: {sorted(CONFIG_CLASSES)}")


def _check_keys(cls: type, keys: Any, where: str) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def make_policy_config(name: str = "ebt", preset: str = "tiny", **overrides: Any) -> Any:
    """A policy config from a preset plus overrides (ConfigError for unknown names and keys)."""
    _known(name)
    presets = PRESETS.get(name, {})
    if preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r} for policy {name!r}; known: {sorted(presets)}"
        )
    cls = CONFIG_CLASSES[name]
    _check_keys(cls, overrides, f"{name} policy config overrides")
    return cls(**{**presets[preset], "preset": preset, **overrides})


def policy_config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a config from ``dataclasses.asdict(cfg)`` (ConfigError naming bad keys or types)."""
    if not isinstance(d, dict):
        raise ConfigError(f"policy config must be a dict, got {type(d).__name__}")
    name = d.get("name", "ebt")
    _known(name)
    cls = CONFIG_CLASSES[name]
    _check_keys(cls, d, f"{name} policy config")
    return cls(**d)


def make_policy(cfg: Any, shape_meta: dict[str, Any], stats: dict[str, Any] | None = None) -> Any:
    """Build the policy module for ``cfg`` (see :class:`EBTPolicy` for the arguments)."""
    name = getattr(cfg, "name", None)
    _known(name)
    return POLICY_CLASSES[name](cfg, shape_meta, stats)


__all__ = [
    "PRESETS",
    "ChunkPrediction",
    "DescentConfig",
    "EBTPolicy",
    "EBTPolicyConfig",
    "EnergyDescent",
    "NonFiniteEnergyError",
    "Policy",
    "make_policy",
    "make_policy_config",
    "policy_config_from_dict",
]
