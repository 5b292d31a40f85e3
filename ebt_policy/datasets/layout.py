"""Facts of the store's on-disk layout shared by its reader, writer and validation: key names,
schema version, chunking and compression of new arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

SCHEMA_VERSION = 1
ACTION_KEY = "action"
RGB_SUFFIX = "_image"
# Target bytes per chunk for time-chunked arrays (images use one frame per chunk instead).
CHUNK_BYTES = 3 * 2**19  # 1.5 MiB
EPISODE_ENDS_CHUNK = 4096
# Rows read at a time by whole-array scans (value checks, statistics).
SCAN_BYTES = 64 * 2**20


def created_by() -> str:
    """The ``created_by`` attribute of new stores."""
    from ebt_policy import __version__

    return f"ebt-policy {__version__}"


def is_rgb_key(key: str) -> bool:
    """Naming convention of the store: keys ending in ``_image`` hold uint8 HWC images."""
    return key.endswith(RGB_SUFFIX)


def compressors(zarr_format: int = 3) -> list[Any]:
    """Blosc zstd with byte shuffle, in the codec API of the store's zarr format."""
    if zarr_format == 2:  # appending first arrays to an empty format-2 store
        import numcodecs

        return [numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)]
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]


def chunk_rows(step_shape: tuple[int, ...], dtype: np.dtype, rgb: bool) -> int:
    """Rows per chunk of a new array: one frame for images, about CHUNK_BYTES otherwise."""
    if rgb:
        return 1
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, CHUNK_BYTES // step_bytes)
