"""JSON conversion of the values our configs, metadata and results hold."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebt_policy.utils.files import atomic_write_text


def to_jsonable(value: Any, where: str = "value", *, strict: bool = False) -> Any:
    """Plain JSON values from dataclasses, mappings, sequences, paths, numpy and torch values.

    With ``strict`` a value JSON cannot represent (NaN/Inf, an unknown type) raises ``ValueError``
    naming ``where`` (the dotted path to it); without it unknown types pass through unchanged.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where, strict=strict)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}", strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist(), where, strict=strict)  # numpy / torch values
    if isinstance(value, float) and strict and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not representable in JSON")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if strict:
        raise ValueError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable")
    return value


def write_json_atomic(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """``to_jsonable(value)`` written to ``path`` atomically, with a trailing newline."""
    return atomic_write_text(path, json.dumps(to_jsonable(value), indent=indent) + "\n")
