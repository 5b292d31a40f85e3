"""Root attributes of an episode store: JSON conversion on write, and the one type check of every
field the stack reads from them (run on create, on update and on every open, so a store is never
written with metadata it would refuse to open)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ebt_policy.datasets.layout import SCHEMA_VERSION, created_by
from ebt_policy.errors import DatasetError
from ebt_policy.utils import to_jsonable

STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


def jsonable(value: Any, where: str = "") -> Any:
    """``value`` as plain JSON values; DatasetError naming ``where`` if impossible."""
    try:
        return to_jsonable(value, where, strict=True)
    except ValueError as exc:
        raise DatasetError(f"metadata {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _list_of(pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(pred(x) for x in v)


_MAPPING = (lambda v: isinstance(v, Mapping), "an object")
_STR = (lambda v: isinstance(v, str), "a string")
_INT = (_is_int, "an integer")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_INTS = (_list_of(_is_int), "a list of integers")
_STRS = (_list_of(lambda x: isinstance(x, str)), "a list of strings")
_NUMBERS = (_list_of(_is_number), "a list of finite numbers")

# dotted key -> (check, what was expected). A field is checked where present; its parents must
# be objects. Fields nobody reads are free-form.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "created_by": _STR,
    "task": _MAPPING,
    "task.name": _STR,
    "task.env_kwargs": _MAPPING,
    "control_hz": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "horizon": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "action_space": _MAPPING,
    "action_space.kind": (
        lambda v: v in (None, "delta", "absolute"),
        "'delta' or 'absolute'",
    ),
    "action_space.low": _NUMBERS,
    "action_space.high": _NUMBERS,
    "action_space.names": _STRS,
    "action_space.units": _STR,
    "obs_keys": _MAPPING,
    "obs_keys.low_dim": _STRS,
    "obs_keys.rgb": _STRS,
    "splits": (
        lambda v: isinstance(v, Mapping) and all(_INTS[0](x) for x in v.values()),
        "an object of episode index lists",
    ),
    "collection": _MAPPING,
    "collection.task": _STR,
    "collection.expert": _STR,
    "collection.seed": _INT,
    "collection.images": _BOOL,
    "collection.keep_failures": _BOOL,
    "collection.max_steps": (lambda v: v is None or _is_int(v), "an integer or null"),
    "collection.env_kwargs": _MAPPING,
    "collection.next_seed": _INT,
    "collection.kept_seeds": _INTS,
    "collection.failed_seeds": _INTS,
    "collection.episode_success": (_list_of(lambda x: isinstance(x, bool)), "a list of booleans"),
    "stats": _MAPPING,
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(path: str, key: str, expected: str, value: Any) -> DatasetError:
    return DatasetError(f"{path}: metadata key {key!r}: expected {expected}, got {_short(value)}")


def _lookup(attrs: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = attrs
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def check_schema_version(path: str, attrs: Mapping[str, Any]) -> None:
    """Stores without a schema version are foreign Diffusion-Policy-layout stores: accepted."""
    version = attrs.get("schema_version")
    if version is not None and (not _is_int(version) or version != SCHEMA_VERSION):
        raise DatasetError(
            f"{path}: key 'schema_version': unknown schema version {version!r} "
            f"(supported: {SCHEMA_VERSION})"
        )


def check_metadata(
    path: str, attrs: Mapping[str, Any], step_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> None:
    """DatasetError naming the first field of ``attrs`` of the wrong type. ``step_shapes``
    (key -> per-step shape, (C,) for images) also checks each key's ``stats`` shapes."""
    check_schema_version(path, attrs)
    for key, (ok, expected) in FIELDS.items():
        present, value = _lookup(attrs, key)
        if present and not ok(value):
            raise _bad(path, key, expected, value)
    for key, entry in (attrs.get("stats") or {}).items():
        _check_stats_entry(path, key, entry, (step_shapes or {}).get(key))


def _check_stats_entry(path: str, key: str, entry: Any, shape: tuple[int, ...] | None) -> None:
    where = f"stats.{key}"
    if not isinstance(entry, Mapping):
        raise _bad(path, where, "an object", entry)
    for name in STAT_NAMES:
        if name not in entry:
            raise DatasetError(f"{path}: metadata key '{where}' lacks {name!r}")
        try:
            value = np.asarray(entry[name], dtype=np.float64)
        except (TypeError, ValueError):
            raise _bad(path, f"{where}.{name}", "an array of numbers", entry[name]) from None
        if not np.isfinite(value).all():
            raise _bad(path, f"{where}.{name}", "finite numbers", entry[name])
        if shape is not None and value.shape != shape:
            raise DatasetError(
                f"{path}: metadata key '{where}.{name}': shape {value.shape}, "
                f"expected {shape} (the per-step shape of data/{key})"
            )
    if "count" in entry and not (_is_int(entry["count"]) and entry["count"] >= 0):
        raise _bad(path, f"{where}.count", "a non-negative integer", entry["count"])
    if "exact_quantiles" in entry and not isinstance(entry["exact_quantiles"], bool):
        raise _bad(path, f"{where}.exact_quantiles", "true or false", entry["exact_quantiles"])


def metadata_for_create(path: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Root attributes of a new store: ``metadata`` as JSON plus ``schema_version`` and
    ``created_by``, checked as :func:`check_metadata` checks them on open."""
    meta = jsonable(dict(metadata or {}), "")
    version = meta.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: metadata schema_version {version!r} is not supported "
            f"(this version writes {SCHEMA_VERSION})"
        )
    meta["schema_version"] = SCHEMA_VERSION
    meta.setdefault("created_by", created_by())
    action_space = meta.get("action_space")
    if action_space is not None and (
        not isinstance(action_space, dict)
        or action_space.get("kind") not in (None, "delta", "absolute")
    ):
        raise DatasetError(
            f"{path}: metadata key 'action_space': kind must be 'delta' or 'absolute', "
            f"got {action_space!r}"
        )
    check_metadata(path, meta)
    return meta
