"""Access to the zarr hierarchy under an episode store: which zarr store a location maps to,
opening nodes with metadata errors turned into DatasetError, listing stored chunk keys, and the
staged writes the commit protocol of ``EpisodeStore.add_episode`` relies on."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ebt_policy.errors import DatasetError

# zarr raises these (or subclasses) for metadata documents it cannot parse: bad JSON, a missing
# or ill-typed field, an unknown data type or codec.
METADATA_ERRORS = (ValueError, TypeError, KeyError, AttributeError, zipfile.BadZipFile)
# ... and these for chunks it cannot read or decode.
READ_ERRORS = (ValueError, RuntimeError, OSError, EOFError, zipfile.BadZipFile)
_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")


def is_local(path: str) -> bool:
    """True for a filesystem path or ``file://`` URL (not another fsspec protocol)."""
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    """``path`` without a ``file://`` prefix."""
    return path[len("file://") :] if path.startswith("file://") else path


def open_zarr_store(path: str, mode: str, storage_options: dict | None) -> Any:
    """Map a location to a zarr store: local directory, ``.zip`` file or fsspec URL."""
    read_only = mode == "r"
    if not is_local(path):
        try:
            return zarr.storage.FsspecStore.from_url(
                path, storage_options=storage_options, read_only=read_only
            )
        except (ImportError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot open fsspec URL: {exc}") from exc
    local = local_path(path)
    if local.endswith(".zip"):
        if not read_only:
            raise DatasetError(
                f"{path}: .zip stores are read-only here; write a directory store and zip it"
            )
        if os.path.isdir(local):
            raise DatasetError(f"{path}: is a directory, expected a .zip file")
        if not os.path.isfile(local):
            raise DatasetError(f"{path}: no such file")
        _check_zip(path, local)
        return zarr.storage.ZipStore(local, mode="r")
    return zarr.storage.LocalStore(local, read_only=read_only)


def _check_zip(path: str, local: str) -> None:
    """DatasetError unless ``local`` is a readable zip archive holding a zarr hierarchy at its
    top (a store zipped with its folder around it is the usual mistake)."""
    try:
        with zipfile.ZipFile(local) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .zip archive ({exc})") from exc
    if any(n in _METADATA_FILES for n in names):
        return
    tops = {n.split("/", 1)[0] for n in names}
    inner = [t for t in sorted(tops) if f"{t}/zarr.json" in names or f"{t}/.zgroup" in names]
    hint = (
        f"; the store is inside the folder '{inner[0]}/' of the archive: zip the store's "
        "contents, not the folder"
        if inner
        else ""
    )
    raise DatasetError(f"{path}: .zip archive holds no zarr.json or .zgroup at its top{hint}")


def open_root(store: Any, path: str, mode: str) -> zarr.Group:
    """The root group of ``store``; DatasetError for anything else or unreadable metadata."""
    try:
        node = zarr.open(store, mode="r" if mode == "r" else "r+")
    except (FileNotFoundError, NotADirectoryError, zarr.errors.NodeTypeValidationError) as exc:
        raise DatasetError(f"{path}: not a zarr group ({exc})") from exc
    except KeyError as exc:
        raise DatasetError(f"{path}: not a zarr group ({exc})") from exc
    except METADATA_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable zarr metadata {_root_doc(store)} ({exc})") from exc
    if not isinstance(node, zarr.Group):
        raise DatasetError(f"{path}: is a zarr array, expected a group with data/ and meta/")
    return node


def _root_doc(store: Any) -> str:
    return "'.zgroup'" if _listing(store.list_dir("")) & {".zgroup"} else "'zarr.json'"


def _listing(entries: AsyncIterator[str]) -> set[str]:
    async def collect() -> set[str]:
        return {e async for e in entries}

    return sync(collect())


def metadata_doc(node_path: str, zarr_format: int, array: bool) -> str:
    """The metadata document of a node: ``data/action/zarr.json`` (format 3) or ``.zarray``."""
    name = "zarr.json" if zarr_format == 3 else (".zarray" if array else ".zgroup")
    return f"{node_path}/{name}" if node_path else name


def child(group: zarr.Group, name: str, path: str) -> Any:
    """``group[name]`` with unreadable metadata reported as DatasetError naming its document;
    None where no node of that name exists."""
    node_path = f"{group.path}/{name}" if group.path else name
    try:
        return group[name]
    except KeyError:
        return None
    except METADATA_ERRORS as exc:
        doc = metadata_doc(node_path, group.metadata.zarr_format, array=True)
        if group.metadata.zarr_format == 2 and not _listing(group.store.list_dir(node_path)) & {
            ".zarray"
        }:
            doc = metadata_doc(node_path, 2, array=False)
        raise DatasetError(
            f"{path}: key '{node_path}': unreadable metadata '{doc}' ({exc})"
        ) from exc


def member_arrays(group: zarr.Group, path: str) -> dict[str, zarr.Array]:
    """Arrays directly under ``group``, sorted by name. Every sub-folder must be a zarr node: a
    folder whose metadata document is missing is a DatasetError, not silently skipped."""
    arrays: dict[str, zarr.Array] = {}
    for name in sorted(_listing(group.store.list_dir(group.path))):
        if name in _METADATA_FILES or name.endswith(".partial"):
            continue
        node_path = f"{group.path}/{name}"
        if not _listing(group.store.list_dir(node_path)):
            continue  # a stray file, not a node
        node = child(group, name, path)
        if node is None:
            doc = metadata_doc(node_path, group.metadata.zarr_format, array=True)
            raise DatasetError(f"{path}: key '{node_path}': metadata '{doc}' is missing")
        if isinstance(node, zarr.Array):
            arrays[name] = node
    return arrays


@dataclasses.dataclass(frozen=True)
class MissingChunk:
    """A chunk of committed rows whose file is absent: its storage key and row range."""

    key: str
    start: int
    stop: int


def missing_chunks(arr: zarr.Array, n_rows: int) -> Iterator[MissingChunk]:
    """Chunks holding rows [0, n_rows) of ``arr`` that are not in its store (file presence
    only, no data is read). Assumes every chunk was written (see ``write_beyond``)."""
    grid = arr.shards or arr.chunks
    if n_rows <= 0 or any(s == 0 for s in arr.shape[1:]):
        return
    prefix = arr.store_path.path
    store = arr.store
    if isinstance(store, zarr.storage.LocalStore):
        # one stat per chunk: image arrays hold a chunk file (four folder levels) per frame,
        # and walking those folders costs about 20x more
        top = os.path.join(str(store.root), prefix)

        def present(key: str) -> bool:
            return os.path.isfile(os.path.join(top, key))
    else:
        stored = {k[len(prefix) + 1 :] for k in _listing(store.list_prefix(prefix + "/"))}
        present = stored.__contains__
    others = [range(-(-s // c)) for s, c in zip(arr.shape[1:], grid[1:], strict=True)]
    for i in range(-(-n_rows // grid[0])):
        for rest in itertools.product(*others):
            key = arr.metadata.encode_chunk_key((i, *rest))
            if not present(key):
                start = i * grid[0]
                yield MissingChunk(key, start, min(start + grid[0], n_rows))


@contextlib.contextmanager
def reading(path: str, key: str) -> Iterator[None]:
    """Turn codec/IO failures on corrupt chunks into a DatasetError naming the key."""
    try:
        yield
    except READ_ERRORS as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(
            f"{path}: key {key!r}: unreadable data ({type(exc).__name__}: {exc})"
        ) from exc


def write_beyond(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write ``values`` at rows [start, start+len) while leaving the stored shape unchanged.

    The chunks are written through a view whose (unsaved) metadata has the grown shape; the caller
    saves the new shape afterwards with ``arr.resize``. Until then readers see the old shape, so
    the write is invisible until committed. Falls back to resize-then-write if zarr's internals
    change (the commit order of ``episode_ends`` still keeps the store valid in that case).

    Chunks equal to the fill value are written too (zarr skips them by default), so that a chunk
    file missing for committed rows always means a lost file (see ``missing_chunks``).
    """
    new_shape = (start + len(values), *arr.shape[1:])
    try:
        a = arr._async_array
        staged_async = type(a)(
            metadata=a.metadata.update_shape(new_shape),
            store_path=a.store_path,
            config=dataclasses.replace(a._config, write_empty_chunks=True),
        )
        staged = zarr.Array(staged_async)
    except (AttributeError, TypeError):  # pragma: no cover - depends on zarr internals
        arr.resize(new_shape)
        staged = arr
    staged[start : start + len(values)] = values
