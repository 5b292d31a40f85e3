"""The policy registry: policy names -> (config class, policy class, presets).

A policy is a folder under ``policies/`` (its configuration, modeling and presets) plus one
``register_policy(...)`` line in ``policies/__init__.py``; nothing else names it. A preset is one
object, :class:`Preset`: the policy config and the training recipe that goes with it.

```python
cfg = make_policy_config("ebt", preset="mlp", descent={"descent_steps": 20})
policy = make_policy(cfg, shape_meta, stats)
get_preset("ebt", "mlp").train.batch_size  # 256
```
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ebt_policy.errors import ConfigError
from ebt_policy.models.shapes import ShapeMeta
from ebt_policy.policies.base import Policy
from ebt_policy.policies.validation import check_keys, replace_fields


@dataclass(frozen=True)
class TrainRecipe:
    """The optimiser settings a preset trains with (TrainConfig fields left at None take these)."""

    lr: float  # peak AdamW learning rate
    warmup_steps: int  # linear warm-up before the cosine (at most steps // 5 is used)
    batch_size: int  # global batch size


@dataclass(frozen=True)
class Preset:
    """A named starting point: a policy config plus its training recipe.

    Do not mutate ``policy``: :func:`make_policy_config` hands out copies of it.
    """

    policy: Any  # the policy's config dataclass, with ``preset`` set to this preset's name
    train: TrainRecipe


@dataclass(frozen=True)
class PolicyEntry:
    """What :func:`register_policy` records for one policy name."""

    config_cls: type
    policy_cls: type
    presets: Mapping[str, Preset]


_REGISTRY: dict[str, PolicyEntry] = {}


def register_policy(
    name: str, config_cls: type, policy_cls: type, presets: Mapping[str, Preset]
) -> None:
    """Make policy ``name`` known to :func:`make_policy_config`, :func:`make_policy` and
    checkpoint loading. ``config_cls`` is a dataclass with a ``name`` field defaulting to ``name``;
    ``policy_cls(config, shape_meta, stats)`` builds the policy."""
    if name in _REGISTRY:
        raise ValueError(f"policy {name!r} is already registered")
    if not (dataclasses.is_dataclass(config_cls) and issubclass(policy_cls, Policy)):
        raise TypeError(f"policy {name!r}: need a config dataclass and a Policy subclass")
    _REGISTRY[name] = PolicyEntry(config_cls, policy_cls, dict(presets))


def policy_names() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: Any) -> PolicyEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown policy {name!r}; known: {policy_names()}")
    return _REGISTRY[name]


def get_preset(name: str, preset: str) -> Preset:
    """The preset ``preset`` of policy ``name`` (ConfigError naming either when unknown)."""
    presets = _entry(name).presets
    if preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r} for policy {name!r}; known: {sorted(presets)}"
        )
    return presets[preset]


def make_policy_config(name: str = "ebt", preset: str = "tiny", **overrides: Any) -> Any:
    """A policy config from a preset plus overrides (ConfigError for unknown names and keys).

    A nested config takes a dict of the fields to change: ``descent={"descent_steps": 20}`` keeps
    the preset's other descent settings.
    """
    base = copy.deepcopy(get_preset(name, preset).policy)
    return replace_fields(base, {"preset": preset, **overrides}, f"{name} policy config overrides")


def policy_config_from_dict(d: Mapping[str, Any]) -> Any:
    """Rebuild a config from ``dataclasses.asdict(cfg)`` (ConfigError naming bad keys or types)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"policy config must be a dict, got {type(d).__name__}")
    name = d.get("name", "ebt")
    cls = _entry(name).config_cls
    check_keys(cls, d, f"{name} policy config")
    return cls(**d)


def make_policy(
    config: Any, shape_meta: ShapeMeta | Mapping[str, Any], stats: Mapping[str, Any] | None = None
) -> Any:
    """Build the policy module for ``config``.

    Args:
        config: a config from :func:`make_policy_config` or :func:`policy_config_from_dict`.
        shape_meta: a :class:`ShapeMeta` or the nested dict ``EpisodeStore.shape_meta`` gives.
        stats: per-key statistics (``compute_stats``); None builds an empty normaliser for
            ``load_state_dict`` to fill.
    """
    entry = _entry(getattr(config, "name", None))
    return entry.policy_cls(config, shape_meta, stats)
