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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ebt_policy.errors import DatasetError

SCHEMA_VERSION = 1
ACTION_KEY = "action"
RGB_SUFFIX = "_image"
# Target bytes per chunk for time-chunked arrays (images use one frame per chunk instead).
CHUNK_BYTES = 3 * 2**19  # 1.5 MiB
EPISODE_ENDS_CHUNK = 4096
# Rows read at a time by whole-array scans (value checks, statistics).
SCAN_BYTES = 64 * 2**20


def _created_by() -> str:
    from ebt_policy import __version__

    return f"ebt-policy {__version__}"


def is_rgb_key(key: str) -> bool:
    """Naming convention of the store: keys ending in ``_image`` hold uint8 HWC images."""
    return key.endswith(RGB_SUFFIX)


def _compressors(zarr_format: int = 3) -> list[Any]:
    if zarr_format == 2:  # appending first arrays to an empty format-2 store
        import numcodecs

        return [numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)]
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]


def _chunk_rows(step_shape: tuple[int, ...], dtype: np.dtype, rgb: bool) -> int:
    if rgb:
        return 1
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, CHUNK_BYTES // step_bytes)


def _jsonable(value: Any, where: str) -> Any:
    """Convert numpy scalars/arrays to plain JSON values; DatasetError if impossible."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise DatasetError(f"metadata {where}: {value} is not representable in JSON")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise DatasetError(
        f"metadata {where}: value of type {type(value).__name__} is not JSON-serialisable"
    )


def _write_beyond(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write ``values`` at rows [start, start+len) while leaving the stored shape unchanged.

    The chunks are written through a view whose (unsaved) metadata has the grown shape; the caller
    saves the new shape afterwards with ``arr.resize``. Until then readers see the old shape, so
    the write is invisible until committed. Falls back to resize-then-write if zarr's internals
    change (the commit order of ``episode_ends`` still keeps the store valid in that case).
    """
    new_shape = (start + len(values), *arr.shape[1:])
    try:
        a = arr._async_array
        staged_async = type(a)(
            metadata=a.metadata.update_shape(new_shape),
            store_path=a.store_path,
            config=a._config,
        )
        staged = zarr.Array(staged_async)
    except (AttributeError, TypeError):  # pragma: no cover - depends on zarr internals
        arr.resize(new_shape)
        staged = arr
    staged[start : start + len(values)] = values


def _open_zarr_store(path: str, mode: str, storage_options: dict | None) -> Any:
    """Map a location to a zarr store: local directory, ``.zip`` file or fsspec URL."""
    read_only = mode == "r"
    if "://" in path and not path.startswith("file://"):
        try:
            return zarr.storage.FsspecStore.from_url(
                path, storage_options=storage_options, read_only=read_only
            )
        except (ImportError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot open fsspec URL: {exc}") from exc
    local = path[len("file://") :] if path.startswith("file://") else path
    if local.endswith(".zip"):
        if not read_only:
            raise DatasetError(
                f"{path}: .zip stores are read-only here; write a directory store and zip it"
            )
        if not os.path.isfile(local):
            raise DatasetError(f"{path}: no such file")
        return zarr.storage.ZipStore(local, mode="r")
    return zarr.storage.LocalStore(local, read_only=read_only)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class EpisodeStore:
    """Append-only store of episodes (see module docstring for layout and crash safety).

    Create with :meth:`create`, open with :meth:`open`. ``mode="r"`` reads; ``mode="a"`` reads and
    appends. One writer at a time.
    """

    def __init__(self, root: zarr.Group, path: str, mode: str, check_values: bool = True) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        self._validate(check_values=check_values)

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
        meta = _jsonable(dict(metadata or {}), "")
        version = meta.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise DatasetError(
                f"{path}: metadata schema_version {version!r} is not supported "
                f"(this version writes {SCHEMA_VERSION})"
            )
        meta["schema_version"] = SCHEMA_VERSION
        meta.setdefault("created_by", _created_by())
        action_space = meta.get("action_space")
        if action_space is not None and (
            not isinstance(action_space, dict)
            or action_space.get("kind") not in (None, "delta", "absolute")
        ):
            raise DatasetError(
                f"{path}: metadata key 'action_space': kind must be 'delta' or 'absolute', "
                f"got {action_space!r}"
            )
        if _is_local(path):
            return cls._create_local(path, meta, overwrite)
        store = _open_zarr_store(path, "w", storage_options)
        if not overwrite:
            try:
                zarr.open_group(store, mode="r")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
                pass
            else:
                raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it)")
        cls._init_group(store, meta)
        return cls.open(path, "a", storage_options=storage_options, check_values=False)

    @classmethod
    def _create_local(cls, path: str, meta: dict[str, Any], overwrite: bool) -> EpisodeStore:
        """Build the empty store under a temporary name, then rename it into place, so a killed
        creator leaves either nothing or a complete empty store at ``path``."""
        final = Path(path[len("file://") :] if path.startswith("file://") else path)
        if final.exists():
            if not overwrite:
                raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it)")
            if not (
                final.is_dir() and ((final / "zarr.json").exists() or (final / ".zgroup").exists())
            ):
                raise DatasetError(
                    f"{path}: exists and is not a zarr store; refusing to overwrite it"
                )
        tmp = final.with_name(f"{final.name}.creating-{uuid.uuid4().hex[:8]}")
        try:
            cls._init_group(zarr.storage.LocalStore(str(tmp)), meta)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, "a", check_values=False)

    @staticmethod
    def _init_group(store: Any, meta: dict[str, Any]) -> None:
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

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        mode: str = "r",
        storage_options: dict | None = None,
        check_values: bool = True,
    ) -> EpisodeStore:
        """Open and validate an existing store. ``mode`` is "r" (read) or "a" (read and append).

        ``check_values`` scans actions and low-dim observations for NaN/Inf (reads those arrays
        once; images are never scanned). In "a" mode, rows beyond the last committed episode
        (left by a killed writer) are removed.
        """
        path = os.fspath(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if _is_local(path):
            local = path[len("file://") :] if path.startswith("file://") else path
            if not os.path.exists(local):
                raise DatasetError(f"{path}: no such episode store")
        store = _open_zarr_store(path, mode, storage_options)
        try:
            node = zarr.open(store, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.NodeTypeValidationError, KeyError) as exc:
            raise DatasetError(f"{path}: not a zarr group ({exc})") from exc
        except (ValueError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable zarr metadata ({exc})") from exc
        if not isinstance(node, zarr.Group):
            raise DatasetError(f"{path}: is a zarr array, expected a group with data/ and meta/")
        return cls(node, path, mode, check_values=check_values)

    # ------------------------------------------------------------------ validation
    def _err(self, msg: str) -> DatasetError:
        return DatasetError(f"{self.path}: {msg}")

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        """Turn codec/IO failures on corrupt chunks into a DatasetError naming the key."""
        try:
            yield
        except (ValueError, RuntimeError, OSError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise self._err(f"key {key!r}: unreadable data ({type(exc).__name__}: {exc})") from exc

    def _validate(self, check_values: bool) -> None:
        attrs = dict(self._root.attrs)
        version = attrs.get("schema_version")
        # Stores without a schema version are foreign Diffusion-Policy-layout stores: accepted.
        if version is not None and version != SCHEMA_VERSION:
            raise self._err(
                f"key 'schema_version': unknown schema version {version!r} "
                f"(supported: {SCHEMA_VERSION})"
            )
        try:
            meta = self._root["meta"]
            ends_arr = meta["episode_ends"]
        except KeyError:
            raise self._err("missing key 'meta/episode_ends'") from None
        if not isinstance(ends_arr, zarr.Array) or ends_arr.ndim != 1:
            raise self._err("key 'meta/episode_ends' must be a 1-D array")
        if not np.issubdtype(ends_arr.dtype, np.integer):
            raise self._err(f"key 'meta/episode_ends' has dtype {ends_arr.dtype}, expected int64")
        try:
            data = self._root["data"]
        except KeyError:
            raise self._err("missing key 'data'") from None
        if not isinstance(data, zarr.Group):
            raise self._err("key 'data' must be a group")
        self._ends_arr = ends_arr
        self._data = data
        with self._reading("meta/episode_ends"):
            ends = np.asarray(ends_arr[:], dtype=np.int64)
        bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
        if len(bad):
            i = int(bad[0])
            prev = ends[i - 1] if i > 0 else 0
            if ends[i] == prev:
                raise self._err(
                    f"key 'meta/episode_ends': episode {i} is empty "
                    f"(episode_ends[{i}] = {ends[i]} equals the previous end)"
                )
            if ends[i] < prev:
                raise self._err(
                    f"key 'meta/episode_ends': not increasing at index {i} ({ends[i]} after {prev})"
                )
        self._ends = ends
        n_steps = int(ends[-1]) if len(ends) else 0
        self._arrays: dict[str, zarr.Array] = {}
        for key in sorted(data.array_keys()):
            arr = data[key]
            if arr.ndim == 0:
                raise self._err(f"key 'data/{key}' is a scalar, expected (steps, ...)")
            if arr.shape[0] < n_steps:
                raise self._err(
                    f"key 'data/{key}' has {arr.shape[0]} steps but meta/episode_ends[-1] is "
                    f"{n_steps}"
                )
            self._arrays[key] = arr
        if n_steps and not self._arrays:
            raise self._err(f"key 'data' holds no arrays but episode_ends[-1] is {n_steps}")
        if self.mode == "a":
            self._truncate_uncommitted()
        if check_values:
            for key in self.keys:
                if self._checks_finite(key):
                    self._check_finite_stored(key)

    def _truncate_uncommitted(self) -> None:
        n = self.n_steps
        for arr in self._arrays.values():
            if arr.shape[0] > n:
                arr.resize((n, *arr.shape[1:]))
        if _is_local(self.path):
            # temp files of the local store's atomic writes left by a killed writer
            local = self.path[len("file://") :] if self.path.startswith("file://") else self.path
            for leftover in Path(local).rglob("*.partial"):
                leftover.unlink(missing_ok=True)

    def _checks_finite(self, key: str) -> bool:
        arr = self._arrays[key]
        return not self.is_rgb(key) and np.issubdtype(arr.dtype, np.floating)

    def _check_finite_stored(self, key: str) -> None:
        for start, block in self.iter_blocks(key):
            self._check_finite(key, block, offset=start, where="step")

    def _check_finite(self, key: str, block: np.ndarray, offset: int, where: str) -> None:
        bad = ~np.isfinite(block)
        if bad.any():
            idx = np.argwhere(bad)[0]
            row = int(idx[0]) + offset
            value = block[tuple(idx)]
            ep = (
                f" (episode {int(np.searchsorted(self._ends, row, side='right'))})"
                if where == "step"
                else ""
            )
            raise self._err(
                f"key 'data/{key}': non-finite value {value} at {where} {row}{ep}, "
                f"index {tuple(int(i) for i in idx[1:])}"
            )

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
            raise self._err(f"no key 'data/{key}' (keys: {self.keys})") from None

    def key_shape(self, key: str) -> tuple[int, ...]:
        """Per-step shape of ``key``."""
        return tuple(self.array(key).shape[1:])

    def key_dtype(self, key: str) -> np.dtype:
        return np.dtype(self.array(key).dtype)

    def is_rgb(self, key: str) -> bool:
        """True for image keys: listed under metadata obs_keys.rgb, named ``*_image``, or stored
        as (H, W, C) frames with 1, 3 or 4 channels, as in Diffusion Policy's stores (``img``,
        float32 in [0, 255] in its PushT data)."""
        obs_keys = self._root.attrs.get("obs_keys")
        if isinstance(obs_keys, Mapping) and key in (obs_keys.get("rgb") or []):
            return True
        if key in self._arrays:
            arr = self._arrays[key]
            if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
                return True
        return is_rgb_key(key)

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
            with self._reading(f"data/{k}"):
                out[k] = np.asarray(self.array(k)[sl])
        return out

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows [start, stop) of ``key``."""
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        with self._reading(f"data/{key}"):
            return np.asarray(self.array(key)[start:stop])

    def iter_blocks(self, key: str, block_bytes: int = SCAN_BYTES) -> Iterable[tuple[int, Any]]:
        """Yield (start_row, rows) over the committed rows of ``key`` in chunk-aligned blocks."""
        arr = self.array(key)
        step_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
        chunk = arr.chunks[0]
        rows = max(1, block_bytes // step_bytes)
        if rows >= chunk:
            rows = rows // chunk * chunk  # whole chunks: no chunk is decompressed twice
        for start in range(0, self.n_steps, rows):
            with self._reading(f"data/{key}"):
                block = np.asarray(arr[start : min(start + rows, self.n_steps)])
            yield start, block

    # ------------------------------------------------------------------ metadata
    def update_metadata(self, **kv: Any) -> None:
        """Set root attributes (JSON-serialisable values); one atomic metadata write."""
        self._require_writable()
        if "schema_version" in kv and kv["schema_version"] != SCHEMA_VERSION:
            raise self._err(f"cannot set schema_version to {kv['schema_version']!r}")
        self._root.attrs.update(_jsonable(kv, ""))

    def shape_meta(self, obs_keys: Sequence[str]) -> dict[str, Any]:
        """Shapes for building a policy: ``{"obs": {key: {"shape", "type"}}, "action": {...}}``."""
        obs: dict[str, Any] = {}
        for key in obs_keys:
            if key == ACTION_KEY or key not in self._arrays:
                raise self._err(f"unknown observation key {key!r} (keys: {self.keys})")
            obs[key] = {
                "shape": list(self.key_shape(key)),
                "type": "rgb" if self.is_rgb(key) else "low_dim",
            }
        return {"obs": obs, "action": {"shape": list(self.key_shape(ACTION_KEY))}}

    # ------------------------------------------------------------------ appending
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise self._err("opened read-only; use EpisodeStore.open(path, mode='a') to append")

    def _check_episode(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        index = self.n_episodes
        if not episode:
            raise self._err(f"episode {index} has no keys")
        arrays = {str(k): np.asarray(v) for k, v in episode.items()}
        if ACTION_KEY not in arrays:
            raise self._err(f"episode {index} lacks key {ACTION_KEY!r} (got {sorted(arrays)})")
        if self._arrays:
            missing = sorted(set(self._arrays) - set(arrays))
            extra = sorted(set(arrays) - set(self._arrays))
            if missing:
                raise self._err(
                    f"episode {index} lacks key {missing[0]!r} (store keys: {self.keys})"
                )
            if extra:
                raise self._err(
                    f"episode {index} has key {extra[0]!r} not in the store (keys: {self.keys})"
                )
        lengths = {k: (a.shape[0] if a.ndim else -1) for k, a in arrays.items()}
        length = lengths[ACTION_KEY]
        for key, a in arrays.items():
            if a.ndim == 0:
                raise self._err(f"episode {index} key {key!r}: scalar, expected (T, ...)")
            if lengths[key] != length:
                raise self._err(
                    f"episode {index} key {key!r} has {lengths[key]} steps, "
                    f"{ACTION_KEY!r} has {length}"
                )
        if length == 0:
            raise self._err(f"episode {index} is empty (0 steps)")
        if arrays[ACTION_KEY].ndim != 2:
            raise self._err(
                f"episode {index} key {ACTION_KEY!r}: shape {arrays[ACTION_KEY].shape}, "
                "expected (T, action_dim)"
            )
        for key, a in arrays.items():
            rgb = self.is_rgb(key)
            if key in self._arrays:
                want_shape, want_dtype = self.key_shape(key), self.key_dtype(key)
                if a.shape[1:] != want_shape:
                    raise self._err(
                        f"episode {index} key {key!r}: per-step shape {a.shape[1:]}, "
                        f"store has {want_shape}"
                    )
                ok = a.dtype == want_dtype or (
                    # widening/narrowing within floats, or ints into floats: lossless enough
                    want_dtype.kind == "f" and a.dtype.kind in "fiub"
                )
                if not ok:
                    raise self._err(
                        f"episode {index} key {key!r}: dtype {a.dtype}, store has {want_dtype}"
                    )
                arrays[key] = a.astype(want_dtype, copy=False)
            elif rgb and (a.dtype != np.uint8 or a.ndim != 4):
                raise self._err(
                    f"episode {index} key {key!r}: images must be uint8 (T, H, W, C), got "
                    f"{a.dtype} {a.shape}"
                )
            elif a.dtype.kind not in "fiub":
                raise self._err(f"episode {index} key {key!r}: unsupported dtype {a.dtype}")
            if not rgb and arrays[key].dtype.kind == "f":
                self._check_finite(key, arrays[key], offset=0, where=f"episode {index} step")
        return arrays

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Append one complete episode (``key -> (T, ...)``); returns its index.

        All keys need the same T >= 1 and must match the store's keys, per-step shapes and
        dtypes (floats are cast to the stored float dtype). Actions and low-dim observations must
        be finite. The episode becomes visible only once fully written (see module docstring).
        """
        self._require_writable()
        arrays = self._check_episode(episode)
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
                    chunks=(_chunk_rows(a.shape[1:], a.dtype, rgb), *a.shape[1:]),
                    compressors=_compressors(self.zarr_format),
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
