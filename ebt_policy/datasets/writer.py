"""The writing side of an episode store: creating an empty store atomically, checking an episode
before it is appended, and cutting off rows a killed writer left past the last commit. The
commit itself (``EpisodeStore.add_episode``) stays beside the store it changes."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ebt_policy.datasets.layout import ACTION_KEY, EPISODE_ENDS_CHUNK
from ebt_policy.datasets.validation import NUMERIC_KINDS, check_finite
from ebt_policy.datasets.zarr_io import is_local, local_path
from ebt_policy.errors import DatasetError

if TYPE_CHECKING:
    from ebt_policy.datasets.store import EpisodeStore


def init_group(store: Any, meta: dict[str, Any]) -> None:
    """Write an empty store: groups ``data`` and ``meta``, an empty ``meta/episode_ends``."""
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.create_group("data")
    meta_group = root.create_group("meta")
    meta_group.create_array(
        "episode_ends",
        shape=(0,),
        dtype="int64",
        chunks=(EPISODE_ENDS_CHUNK,),
        compressors=None,
        fill_value=0,
    )
    root.attrs.update(meta)


def create_local(path: str, meta: dict[str, Any], overwrite: bool) -> None:
    """Build the empty store under a temporary name, then rename it into place, so a killed
    creator leaves either nothing or a complete empty store at ``path``."""
    final = Path(local_path(path))
    if final.exists():
        if not overwrite:
            raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it)")
        if not (
            final.is_dir() and ((final / "zarr.json").exists() or (final / ".zgroup").exists())
        ):
            raise DatasetError(f"{path}: exists and is not a zarr store; refusing to overwrite it")
    tmp = final.with_name(f"{final.name}.creating-{uuid.uuid4().hex[:8]}")
    try:
        init_group(zarr.storage.LocalStore(str(tmp)), meta)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def truncate_uncommitted(path: str, arrays: Mapping[str, zarr.Array], n_steps: int) -> None:
    """Cut rows past ``n_steps`` (an unfinished episode of a killed writer) off every array."""
    for arr in arrays.values():
        if arr.shape[0] > n_steps:
            arr.resize((n_steps, *arr.shape[1:]))
    if is_local(path):
        # temp files of the local store's atomic writes left by a killed writer
        for leftover in Path(local_path(path)).rglob("*.partial"):
            leftover.unlink(missing_ok=True)


def _err(store: EpisodeStore, msg: str) -> DatasetError:
    return DatasetError(f"{store.path}: {msg}")


def _check_keys(store: EpisodeStore, index: int, arrays: Mapping[str, np.ndarray]) -> int:
    """Key set and common length of an episode; returns the length."""
    if ACTION_KEY not in arrays:
        raise _err(store, f"episode {index} lacks key {ACTION_KEY!r} (got {sorted(arrays)})")
    if store.keys:
        missing = sorted(set(store.keys) - set(arrays))
        extra = sorted(set(arrays) - set(store.keys))
        if missing:
            raise _err(
                store, f"episode {index} lacks key {missing[0]!r} (store keys: {store.keys})"
            )
        if extra:
            raise _err(
                store, f"episode {index} has key {extra[0]!r} not in the store (keys: {store.keys})"
            )
    lengths = {k: (a.shape[0] if a.ndim else -1) for k, a in arrays.items()}
    length = lengths[ACTION_KEY]
    for key, a in arrays.items():
        if a.ndim == 0:
            raise _err(store, f"episode {index} key {key!r}: scalar, expected (T, ...)")
        if lengths[key] != length:
            raise _err(
                store,
                f"episode {index} key {key!r} has {lengths[key]} steps, "
                f"{ACTION_KEY!r} has {length}",
            )
    if length == 0:
        raise _err(store, f"episode {index} is empty (0 steps)")
    if arrays[ACTION_KEY].ndim != 2:
        raise _err(
            store,
            f"episode {index} key {ACTION_KEY!r}: shape {arrays[ACTION_KEY].shape}, "
            "expected (T, action_dim)",
        )
    return length


def check_episode(store: EpisodeStore, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of ``episode`` as they will be stored (floats cast to the stored dtype);
    DatasetError naming the key for anything the store would not accept."""
    index = store.n_episodes
    if not episode:
        raise _err(store, f"episode {index} has no keys")
    arrays = {str(k): np.asarray(v) for k, v in episode.items()}
    _check_keys(store, index, arrays)
    for key, a in arrays.items():
        rgb = store.is_rgb(key)
        if key in store.keys:
            want_shape, want_dtype = store.key_shape(key), store.key_dtype(key)
            if a.shape[1:] != want_shape:
                raise _err(
                    store,
                    f"episode {index} key {key!r}: per-step shape {a.shape[1:]}, "
                    f"store has {want_shape}",
                )
            ok = a.dtype == want_dtype or (
                # widening/narrowing within floats, or ints into floats: lossless enough
                want_dtype.kind == "f" and a.dtype.kind in NUMERIC_KINDS
            )
            if not ok:
                raise _err(
                    store, f"episode {index} key {key!r}: dtype {a.dtype}, store has {want_dtype}"
                )
            arrays[key] = a.astype(want_dtype, copy=False)
        elif rgb and (a.dtype != np.uint8 or a.ndim != 4):
            raise _err(
                store,
                f"episode {index} key {key!r}: images must be uint8 (T, H, W, C), got "
                f"{a.dtype} {a.shape}",
            )
        elif a.dtype.kind not in NUMERIC_KINDS:
            raise _err(store, f"episode {index} key {key!r}: unsupported dtype {a.dtype}")
        if not rgb and arrays[key].dtype.kind == "f":
            check_finite(
                store.path, store.episode_ends, key, arrays[key], 0, f"episode {index} step"
            )
    return arrays
