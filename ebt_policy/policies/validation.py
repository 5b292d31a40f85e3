"""Checks shared by the policy config dataclasses: known keys, field types, nested configs.

Every failure is a :class:`~ebt_policy.errors.ConfigError` whose one-line message names the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ebt_policy.errors import ConfigError

_SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def require(ok: bool, where: str, what: str) -> None:
    """ConfigError ``"{where}: {what}"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {what}")


def check_keys(cls: type, keys: Iterable[str], where: str) -> None:
    """ConfigError listing the keys that are not fields of dataclass ``cls``."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}"
            + _nested_hint(cls, unknown)
        )


def _nested_hint(cls: type, unknown: list[str]) -> str:
    """Where a key that belongs to a nested config goes (``alpha`` -> ``descent={...}``)."""
    for f in dataclasses.fields(cls):
        sub = f.default_factory
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            inner = [k for k in unknown if k in {g.name for g in dataclasses.fields(sub)}]
            if inner:
                return f" ({inner} belong in {f.name}: pass {f.name}={{{inner[0]!r}: ...}})"
    return ""


def check_types(cfg: Any, where: str) -> None:
    """ConfigError naming the scalar field whose value has the wrong type (ints pass as floats,
    and are stored as floats). Fields of other types are left to the config's ``__post_init__``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        expected = _SCALAR_TYPES.get(str(f.type))
        if expected is None:
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, f.name, float(value))
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: {f.name} must be {expected.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )


def nested_config(cls: type, value: Any, where: str) -> Any:
    """A nested config field: an instance of ``cls`` as is, or ``cls(**value)`` from a mapping
    (e.g. the ``descent`` entry of a config.json), with unknown keys named."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}"
        )
    check_keys(cls, value, where)
    return cls(**value)


def replace_fields(cfg: Any, overrides: Mapping[str, Any], where: str) -> Any:
    """A copy of dataclass ``cfg`` with ``overrides``; a mapping given for a nested dataclass
    field updates only the fields it names (``descent={"alpha": 100}`` keeps the others)."""
    check_keys(type(cfg), overrides, where)
    resolved = {}
    for key, value in overrides.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = replace_fields(current, value, f"{where}.{key}")
        resolved[key] = value
    return dataclasses.replace(cfg, **resolved)


def check_complete(cfg: Any, given: Mapping[str, Any], where: str) -> None:
    """ConfigError naming the fields of dataclass ``cfg`` that the mapping it was built from
    (e.g. a checkpoint's ``policy.config``) does not list, nested configs included: a saved
    config must not silently take today's defaults."""
    missing = []
    for f in dataclasses.fields(cfg):
        if f.name not in given:
            missing.append(f.name)
            continue
        value, sub = getattr(cfg, f.name), given[f.name]
        if dataclasses.is_dataclass(value) and isinstance(sub, Mapping):
            check_complete(value, sub, f"{where}.{f.name}")
    if missing:
        raise ConfigError(
            f"{where}: lacks field(s) {missing} (a saved config lists every field; convert "
            "older layouts with policies/schema.py)"
        )


def check_window_and_images(cfg: Any, need: Any) -> None:
    """The checks every chunk policy's config shares (EBT's too): the window sizes To, Tp, Ta
    and the image encoder's fields. ``need(ok, what)`` raises the caller's ConfigError."""
    need(cfg.n_obs_steps >= 1, f"n_obs_steps must be >= 1, got {cfg.n_obs_steps}")
    need(cfg.horizon >= 1, f"horizon must be >= 1, got {cfg.horizon}")
    need(
        1 <= cfg.n_action_steps <= cfg.horizon - cfg.n_obs_steps + 1,
        f"n_action_steps must be in [1, horizon - n_obs_steps + 1] = "
        f"[1, {cfg.horizon - cfg.n_obs_steps + 1}], got {cfg.n_action_steps}",
    )
    for key in ("image_feature_dim", "resnet_width", "n_keypoints"):
        need(getattr(cfg, key) >= 1, f"{key} must be >= 1, got {getattr(cfg, key)}")
    need(
        0 < cfg.crop_fraction <= 1,
        f"crop_fraction must be in (0, 1], got {cfg.crop_fraction}",
    )
    need(cfg.color_jitter >= 0, f"color_jitter must be >= 0, got {cfg.color_jitter}")
