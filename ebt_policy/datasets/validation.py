"""The one validation of an episode store, run by ``EpisodeStore.open`` (and so by every command
that reads a store): zarr metadata of every node, root attribute types, ``meta/episode_ends``,
each data array's dtype, rank and length, the presence of every chunk of committed steps, and
(optionally) finite values. ``verify_store`` adds a full read of every committed chunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import zarr

from ebt_policy.datasets.layout import ACTION_KEY, SCAN_BYTES, is_rgb_key
from ebt_policy.datasets.metadata import check_metadata, check_schema_version
from ebt_policy.datasets.zarr_io import (
    METADATA_ERRORS,
    child,
    member_arrays,
    missing_chunks,
    reading,
)
from ebt_policy.errors import DatasetError

# dtype kinds a data array may hold: float, signed/unsigned int, bool
NUMERIC_KINDS = "fiub"


@dataclasses.dataclass
class StoreContents:
    """The validated nodes of a store."""

    data: zarr.Group
    ends_array: zarr.Array
    ends: np.ndarray
    arrays: dict[str, zarr.Array]


def rgb_key(attrs: Mapping[str, Any], key: str, arr: zarr.Array | None) -> bool:
    """True for image keys: listed under metadata obs_keys.rgb, named ``*_image``, or stored as
    (H, W, C) frames with 1, 3 or 4 channels, as in Diffusion Policy's stores (``img``, float32
    in [0, 255] in its PushT data)."""
    obs_keys = attrs.get("obs_keys")
    if isinstance(obs_keys, Mapping) and key in (obs_keys.get("rgb") or []):
        return True
    if arr is not None and arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
        return True
    return is_rgb_key(key)


def validate_store(root: zarr.Group, path: str, check_values: bool) -> StoreContents:
    """Check everything listed in the module docstring; DatasetError naming the culprit."""
    try:
        attrs = dict(root.attrs)
    except METADATA_ERRORS as exc:  # pragma: no cover - attributes are parsed with the root
        raise DatasetError(f"{path}: unreadable root attributes ({exc})") from exc
    check_schema_version(path, attrs)
    meta = _group(root, "meta", path)
    ends_arr = child(meta, "episode_ends", path)
    if ends_arr is None:
        raise DatasetError(f"{path}: missing key 'meta/episode_ends'")
    if not isinstance(ends_arr, zarr.Array) or ends_arr.ndim != 1:
        raise DatasetError(f"{path}: key 'meta/episode_ends' must be a 1-D array")
    if not np.issubdtype(ends_arr.dtype, np.integer):
        raise DatasetError(
            f"{path}: key 'meta/episode_ends' has dtype {ends_arr.dtype}, expected int64"
        )
    data = _group(root, "data", path)
    # A store this code wrote (it has a schema version) holds every chunk of committed rows;
    # other stores may omit chunks equal to the fill value (zarr-python 3's default).
    complete = attrs.get("schema_version") is not None
    if complete:
        _check_chunks(path, "meta/episode_ends", ends_arr, ends_arr.shape[0])
    with reading(path, "meta/episode_ends"):
        ends = np.asarray(ends_arr[:], dtype=np.int64)
    _check_ends(path, ends)
    n_steps = int(ends[-1]) if len(ends) else 0
    arrays = member_arrays(data, path)
    for key, arr in arrays.items():
        _check_array(path, attrs, key, arr, n_steps)
        if complete:
            _check_chunks(path, f"data/{key}", arr, n_steps)
    if n_steps and not arrays:
        raise DatasetError(f"{path}: key 'data' holds no arrays but episode_ends[-1] is {n_steps}")
    if arrays and ACTION_KEY not in arrays:
        raise DatasetError(f"{path}: missing key 'data/{ACTION_KEY}' (keys: {sorted(arrays)})")
    shapes = {
        k: (a.shape[-1],) if rgb_key(attrs, k, a) else tuple(a.shape[1:]) for k, a in arrays.items()
    }
    check_metadata(path, attrs, shapes)
    contents = StoreContents(data, ends_arr, ends, arrays)
    if check_values:
        for key, arr in arrays.items():
            if not rgb_key(attrs, key, arr) and arr.dtype.kind == "f":
                check_finite_stored(path, contents, key)
    return contents


def _group(root: zarr.Group, name: str, path: str) -> zarr.Group:
    node = child(root, name, path)
    if node is None:
        raise DatasetError(f"{path}: missing key {name!r}")
    if not isinstance(node, zarr.Group):
        raise DatasetError(f"{path}: key {name!r} must be a group")
    return node


def _check_ends(path: str, ends: np.ndarray) -> None:
    bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
    if len(bad):
        i = int(bad[0])
        prev = ends[i - 1] if i > 0 else 0
        if ends[i] == prev:
            raise DatasetError(
                f"{path}: key 'meta/episode_ends': episode {i} is empty "
                f"(episode_ends[{i}] = {ends[i]} equals the previous end)"
            )
        raise DatasetError(
            f"{path}: key 'meta/episode_ends': not increasing at index {i} ({ends[i]} after {prev})"
        )


def _check_array(
    path: str, attrs: Mapping[str, Any], key: str, arr: zarr.Array, n_steps: int
) -> None:
    where = f"{path}: key 'data/{key}'"
    if arr.ndim == 0:
        raise DatasetError(f"{where} is a scalar, expected (steps, ...)")
    if np.dtype(arr.dtype).kind not in NUMERIC_KINDS:
        raise DatasetError(f"{where} has dtype {arr.dtype}, expected a numeric dtype")
    if key == ACTION_KEY and arr.ndim != 2:
        raise DatasetError(f"{where} has shape {arr.shape}, expected (steps, action_dim)")
    if rgb_key(attrs, key, arr) and arr.ndim != 4:
        raise DatasetError(
            f"{where} is an image key but has shape {arr.shape}, expected (steps, H, W, C)"
        )
    if arr.shape[0] < n_steps:
        raise DatasetError(
            f"{where} has {arr.shape[0]} steps but meta/episode_ends[-1] is {n_steps}"
        )


def _check_chunks(path: str, key: str, arr: zarr.Array, n_rows: int) -> None:
    for gone in missing_chunks(arr, n_rows):
        rows = "entries" if key == "meta/episode_ends" else "steps"
        raise DatasetError(
            f"{path}: key {key!r}: chunk file '{key}/{gone.key}' is missing "
            f"({rows} {gone.start}-{gone.stop - 1} of {n_rows} committed)"
        )


def check_finite(
    path: str, ends: np.ndarray, key: str, block: np.ndarray, offset: int, where: str
) -> None:
    """DatasetError at the first NaN/Inf of ``block`` (rows ``offset``...)."""
    bad = ~np.isfinite(block)
    if bad.any():
        idx = np.argwhere(bad)[0]
        row = int(idx[0]) + offset
        value = block[tuple(idx)]
        ep = (
            f" (episode {int(np.searchsorted(ends, row, side='right'))})" if where == "step" else ""
        )
        raise DatasetError(
            f"{path}: key 'data/{key}': non-finite value {value} at {where} {row}{ep}, "
            f"index {tuple(int(i) for i in idx[1:])}"
        )


def iter_committed(
    path: str, arr: zarr.Array, key: str, n_steps: int, block_bytes: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start_row, rows) over rows [0, n_steps) of ``arr`` in chunk-aligned blocks."""
    step_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    chunk = arr.chunks[0]
    rows = max(1, block_bytes // step_bytes)
    if rows >= chunk:
        rows = rows // chunk * chunk  # whole chunks: no chunk is decompressed twice
    for start in range(0, n_steps, rows):
        with reading(path, f"data/{key}"):
            block = np.asarray(arr[start : min(start + rows, n_steps)])
        yield start, block


def check_finite_stored(path: str, contents: StoreContents, key: str) -> None:
    """Scan the committed rows of ``key`` for NaN/Inf."""
    n_steps = int(contents.ends[-1]) if len(contents.ends) else 0
    arr = contents.arrays[key]
    for start, block in iter_committed(path, arr, key, n_steps, SCAN_BYTES):
        check_finite(path, contents.ends, key, block, offset=start, where="step")
