"""Episode store: a zarr group in Diffusion Policy's replay-buffer layout.

Layout (compatible with Diffusion Policy's ``ReplayBuffer``)::

    <root>/                 attrs: schema_version, created_by, task, control_hz, action_space, ...
      data/<key>            (N, ...) every episode concatenated along time (axis 0)
      meta/episode_ends     (E,) int64, exclusive cumulative ends: episode i is [ends[i-1], ends[i])

New stores are written with the zarr 3 API (format 3, Blosc zstd, chunked along time only: about
1.5 MB per chunk, one frame per chunk for uint8 HWC images). Format-2 stores in the same layout
(Diffusion Policy's published datasets) open for reading and appending.

Crash safety. :meth:`EpisodeStore.add_episode` writes the new rows of every data array first and
updates ``meta/episode_ends`` last; each zarr metadata document is replaced atomically by the local
store (temp file + rename). A writer killed at any point therefore leaves ``episode_ends``
describing only complete episodes; data arrays may be longer than the last end (rows of the
unfinished episode). Those rows are ignored when reading and cut off when the store is reopened
for appending, so appending simply continues.

Validation. Every open runs ``validation.validate_store`` (metadata of every node, root attribute
types, episode ends, array dtypes and lengths, presence of every chunk of committed steps);
:meth:`EpisodeStore.verify` also reads every committed chunk. The writer stores chunks that hold
only the fill value too, so in a store with a ``schema_version`` a missing chunk is a lost file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from ebt_policy.datasets.layout import (
    ACTION_KEY,
    CHUNK_BYTES,
    EPISODE_ENDS_CHUNK,
    RGB_SUFFIX,
    SCAN_BYTES,
    SCHEMA_VERSION,
    chunk_rows,
    compressors,
    is_rgb_key,
)
from ebt_policy.datasets.metadata import check_metadata, jsonable, metadata_for_create
from ebt_policy.datasets.validation import (
    check_finite,
    iter_committed,
    rgb_key,
    validate_store,
)
from ebt_policy.datasets.writer import check_episode, create_local, init_group, truncate_uncommitted
from ebt_policy.datasets.zarr_io import (
    is_local,
    local_path,
    open_root,
    open_zarr_store,
    reading,
)
from ebt_policy.datasets.zarr_io import write_beyond as _write_beyond
from ebt_policy.errors import DatasetError

__all__ = [
    "ACTION_KEY",
    "CHUNK_BYTES",
    "EPISODE_ENDS_CHUNK",
    "RGB_SUFFIX",
    "SCAN_BYTES",
    "SCHEMA_VERSION",
    "EpisodeStore",
    "is_rgb_key",
]


class EpisodeStore:
    """Append-only store of episodes (see module docstring for layout and crash safety).

    Create with :meth:`create`, open with :meth:`open`. ``mode="r"`` reads; ``mode="a"`` reads and
    appends. One writer at a time.
    """

    def __init__(self, root: zarr.Group, path: str, mode: str, check_values: bool = True) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        contents = validate_store(root, path, check_values=check_values)
        self._data = contents.data
        self._ends_arr = contents.ends_array
        self._ends = contents.ends
        self._arrays: dict[str, zarr.Array] = contents.arrays
        if mode == "a":  # only once every check passed: a refused store is left as it was
            truncate_uncommitted(path, self._arrays, self.n_steps)

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> EpisodeStore:
        """Create an empty store at ``path`` with root ``metadata`` (JSON-serialisable).

        ``schema_version`` and ``created_by`` are filled in. DatasetError if something already
        exists at ``path`` and ``overwrite`` is False.
        """
        path = os.fspath(path)
        meta = metadata_for_create(path, metadata)
        if is_local(path) and local_path(path).endswith(".zip"):  # before anything is written
            raise DatasetError(f"{path}: .zip stores are read-only; write a directory and zip it")
        if is_local(path):
            create_local(path, meta, overwrite)
            return cls.open(path, "a", check_values=False)
        store = open_zarr_store(path, "w", storage_options)
        if not overwrite:
            try:
                zarr.open_group(store, mode="r")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
                pass
            else:
                raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it)")
        init_group(store, meta)
        return cls.open(path, "a", storage_options=storage_options, check_values=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        mode: str = "r",
        storage_options: dict | None = None,
        check_values: bool = True,
    ) -> EpisodeStore:
        """Open and validate an existing store. ``mode`` is "r" (read) or "a" (read and append).

        Every open checks the zarr metadata, the root attributes' types, the episode ends, each
        array's dtype and length, and that every chunk of the committed steps is present (a
        listing, no data read). ``check_values`` also scans actions and low-dim observations for
        NaN/Inf (reads those arrays once; images are never scanned). In "a" mode, rows beyond the
        last committed episode (left by a killed writer) are removed, once the store passed.
        """
        path = os.fspath(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if is_local(path) and not os.path.exists(local_path(path)):
            raise DatasetError(f"{path}: no such episode store")
        store = open_zarr_store(path, mode, storage_options)
        try:
            root = open_root(store, path, mode)
            return cls(root, path, mode, check_values=check_values)
        except BaseException:
            if hasattr(store, "close"):
                store.close()
            raise

    def verify(self) -> None:
        """Read every committed chunk of every key (``dataset info --verify``): DatasetError
        naming the key for a chunk that cannot be decoded or holds NaN/Inf (image keys with a
        float dtype included). Open already checked that every chunk file is present."""
        with reading(self.path, "meta/episode_ends"):
            np.asarray(self._ends_arr[:])
        for key in self.keys:
            floats = self.key_dtype(key).kind == "f"
            for start, block in self.iter_blocks(key):
                if floats:
                    check_finite(self.path, self._ends, key, block, offset=start, where="step")

    # ------------------------------------------------------------------ properties
    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive cumulative ends of the committed episodes."""
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        """Data keys (``action`` and observation keys), sorted."""
        return list(self._arrays)

    @property
    def metadata(self) -> dict[str, Any]:
        """Root attributes as a plain dict (a copy)."""
        return json.loads(json.dumps(dict(self._root.attrs)))

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def uncommitted_steps(self) -> int:
        """Rows beyond the last committed episode (left by a killed writer; ignored)."""
        return max((a.shape[0] - self.n_steps for a in self._arrays.values()), default=0)

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({self.path!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={self.keys})"
        )

    def array(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>`` (may hold uncommitted rows past :attr:`n_steps`)."""
        try:
            return self._arrays[key]
        except KeyError:
            raise DatasetError(f"{self.path}: no key 'data/{key}' (keys: {self.keys})") from None

    def key_shape(self, key: str) -> tuple[int, ...]:
        """Per-step shape of ``key``."""
        return tuple(self.array(key).shape[1:])

    def key_dtype(self, key: str) -> np.dtype:
        return np.dtype(self.array(key).dtype)

    def is_rgb(self, key: str) -> bool:
        """True for image keys: listed under metadata obs_keys.rgb, named ``*_image``, or stored
        as (H, W, C) frames with 1, 3 or 4 channels, as in Diffusion Policy's stores (``img``,
        float32 in [0, 255] in its PushT data)."""
        return rgb_key(self._root.attrs, key, self._arrays.get(key))

    def episode_slice(self, i: int) -> slice:
        """Rows of episode ``i`` in the concatenated arrays."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for {n} episodes")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``key -> (T, ...)`` numpy arrays."""
        sl = self.episode_slice(i)
        out = {}
        for k in self.keys if keys is None else keys:
            with reading(self.path, f"data/{k}"):
                out[k] = np.asarray(self.array(k)[sl])
        return out

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows [start, stop) of ``key``."""
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        with reading(self.path, f"data/{key}"):
            return np.asarray(self.array(key)[start:stop])

    def iter_blocks(self, key: str, block_bytes: int = SCAN_BYTES) -> Iterable[tuple[int, Any]]:
        """Yield (start_row, rows) over the committed rows of ``key`` in chunk-aligned blocks."""
        return iter_committed(self.path, self.array(key), key, self.n_steps, block_bytes)

    # ------------------------------------------------------------------ metadata
    def update_metadata(self, **kv: Any) -> None:
        """Set root attributes (JSON-serialisable values); one atomic metadata write."""
        self._require_writable()
        if "schema_version" in kv and kv["schema_version"] != SCHEMA_VERSION:
            raise DatasetError(
                f"{self.path}: cannot set schema_version to {kv['schema_version']!r}"
            )
        values = jsonable(kv, "")
        check_metadata(self.path, {**dict(self._root.attrs), **values}, self._stat_shapes())
        self._root.attrs.update(values)

    def _stat_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            k: (a.shape[-1],) if self.is_rgb(k) else tuple(a.shape[1:])
            for k, a in self._arrays.items()
        }

    def shape_meta(self, obs_keys: Sequence[str]) -> dict[str, Any]:
        """Shapes for building a policy: ``{"obs": {key: {"shape", "type"}}, "action": {...}}``."""
        obs: dict[str, Any] = {}
        for key in obs_keys:
            if key == ACTION_KEY or key not in self._arrays:
                raise DatasetError(
                    f"{self.path}: unknown observation key {key!r} (keys: {self.keys})"
                )
            obs[key] = {
                "shape": list(self.key_shape(key)),
                "type": "rgb" if self.is_rgb(key) else "low_dim",
            }
        return {"obs": obs, "action": {"shape": list(self.key_shape(ACTION_KEY))}}

    # ------------------------------------------------------------------ appending
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise DatasetError(
                f"{self.path}: opened read-only; use EpisodeStore.open(path, mode='a') to append"
            )

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Append one complete episode (``key -> (T, ...)``); returns its index.

        All keys need the same T >= 1 and must match the store's keys, per-step shapes and
        dtypes (floats are cast to the stored float dtype). Actions and low-dim observations must
        be finite. The episode becomes visible only once fully written (see module docstring).
        """
        self._require_writable()
        arrays = check_episode(self, episode)
        start = self.n_steps
        length = len(arrays[ACTION_KEY])
        if not self._arrays:
            for key in sorted(arrays):
                a = arrays[key]
                rgb = self.is_rgb(key) or (a.dtype == np.uint8 and a.ndim == 4)
                self._arrays[key] = self._data.create_array(
                    key,
                    shape=(0, *a.shape[1:]),
                    dtype=a.dtype,
                    chunks=(chunk_rows(a.shape[1:], a.dtype, rgb), *a.shape[1:]),
                    compressors=compressors(self.zarr_format),
                    fill_value=0,
                )
        # 1. rows of every key, invisible until the shapes are saved
        for key, arr in self._arrays.items():
            _write_beyond(arr, start, arrays[key])
        # 2. grow the data arrays (readers ignore rows past episode_ends[-1])
        for arr in self._arrays.values():
            arr.resize((start + length, *arr.shape[1:]))
        # 3. commit: the new end is written into its chunk first, then the shape is saved
        n = self.n_episodes
        _write_beyond(self._ends_arr, n, np.array([start + length], dtype=np.int64))
        self._ends_arr.resize((n + 1,))
        self._ends = np.append(self._ends, np.int64(start + length))
        return n

    # ------------------------------------------------------------------ context manager
    def close(self) -> None:
        """Release the underlying store (needed for .zip stores)."""
        store = self._root.store
        if hasattr(store, "close"):
            store.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
