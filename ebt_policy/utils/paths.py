"""Output paths checked before the work starts: a command that writes a file, a directory or an
episode store refuses an unusable destination in one line instead of failing after the work (or
leaving half of an output behind). Nothing here creates or changes anything on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ebt_policy.errors import ConfigError

OutputKind = Literal["file", "dir", "store"]


def check_output_path(path: str | os.PathLike | None, kind: OutputKind, what: str) -> Path | None:
    """Refuse ``path`` as a destination for a ``kind`` output (``what`` names the flag or field).

    ``file``: must not be an existing directory. ``dir``: must not be an existing file. ``store``:
    a directory episode store (``.zip`` stores are read-only; URLs other than ``file://`` are left
    to the store). For every kind the nearest existing parent must be a writable directory.
    Returns the path (None stays None).

    Raises:
        ConfigError: one line naming ``what``, the path and what was expected.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if kind == "store":
        if "://" in text and not text.startswith("file://"):
            return Path(text)
        text = text.removeprefix("file://")
        if text.rstrip("/").endswith(".zip"):
            raise ConfigError(
                f"{what} {text}: .zip stores are read-only; write a directory store and zip it"
            )
    target = Path(text)
    if kind == "file" and target.is_dir():
        raise ConfigError(f"{what} {target}: is a directory, expected a file path")
    if kind != "file" and target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {target}: is a file, expected a directory")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {target}: {parent} is a file, expected a directory")
    if not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {target}: cannot write in {parent} (permission denied)")
    return target
