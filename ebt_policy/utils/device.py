"""One rule for ``--device``: ``auto`` is CUDA when available, else CPU; others must exist."""

from __future__ import annotations

from typing import Any

from ebt_policy.errors import ConfigError

KNOWN = ("auto", "cpu", "cuda")


def resolve_device(name: Any, *, local_rank: int = 0) -> Any:
    """A ``torch.device`` for ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    Raises ConfigError (one line naming the value) for unknown names and for CUDA on a machine
    without it.
    """
    import torch

    text = str(name)
    kind, _, index = text.partition(":")
    if kind not in KNOWN or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"device: got {text!r}, expected one of auto, cpu, cuda, cuda:N")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {text!r} requested but CUDA is not available on this machine")
    ordinal = int(index) if index else local_rank
    if ordinal >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {text!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", ordinal)
