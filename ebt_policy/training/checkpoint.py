"""Full training checkpoints: the loadable policy files plus ``training_state/`` for exact resume.

A checkpoint is a directory ``RUN_DIR/checkpoints/step_XXXXXXXX``::

    config.json, model.safetensors    written by ebt_policy.policies.checkpoint (EMA weights)
    training_state/model.safetensors  the raw (non-EMA) weights the optimiser works on
    training_state/state.pt           optimiser, scheduler, EMA, per-rank RNG states (plain
                                      types and tensors: torch.load(weights_only=True) reads it)
    training_state/progress.json      step, epoch, batch index within the epoch, seed, world size

It is written into a hidden temporary directory and renamed into place, then the symlink
``checkpoints/last`` is replaced atomically (symlink to a temporary name, then ``os.replace``), so
``last`` always names a complete checkpoint even if the process is killed at any moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebt_policy.errors import CheckpointError
from ebt_policy.policies.checkpoint import TRAINING_STATE_NAME, write_policy_files
from ebt_policy.utils import atomic_directory, write_json_atomic

STEP_PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and python, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *[float(v) for v in np_state[2:]]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_checkpoint(
    checkpoints_dir: Path,
    *,
    step: int,
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    training_state: dict[str, Any],
    progress: dict[str, Any],
    shape_meta: dict[str, Any],
    dataset_metadata: dict[str, Any],
    train_config: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write one checkpoint atomically and point ``checkpoints/last`` at it.

    Args:
        checkpoints_dir: ``RUN_DIR/checkpoints`` (created if needed).
        step: optimiser steps done; names the directory ``step_XXXXXXXX``.
        model: the raw policy being optimised (its weights go to training_state/).
        ema_model: the policy to deploy (EMA weights, or ``model`` when EMA is off).
        training_state: optimiser/scheduler/EMA state dicts and RNG states (torch.save-able with
            plain types and tensors only).
        progress: JSON-able data position (step, epoch, batch index, seed, world size).
        keep: keep only this many newest step checkpoints (0 keeps all).

    Returns:
        The final checkpoint directory.
    """
    from safetensors.torch import save_model

    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    name = f"{STEP_PREFIX}{step:08d}"
    # Built under a hidden temporary name and renamed into place whole; the same step saved
    # again (e.g. by a resumed run that saved again) replaces the old directory.
    with atomic_directory(checkpoints_dir / name, overwrite=True) as tmp:
        write_policy_files(
            ema_model,
            tmp,
            shape_meta=shape_meta,
            dataset_metadata=dataset_metadata,
            train_config=train_config,
            step=step,
        )
        state_dir = tmp / TRAINING_STATE_NAME
        state_dir.mkdir()
        weights = state_dir / "model.safetensors"
        save_model(model, str(weights))  # owner-only: atomic_directory gives it the usual mode
        torch.save(training_state, state_dir / "state.pt")
        write_json_atomic(state_dir / "progress.json", progress)
        _fsync_dir(tmp)
    # atomic symlink swap: make the new link under a temporary name, then rename over 'last'
    link_tmp = checkpoints_dir / f".last.tmp-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(name, link_tmp)
    os.replace(link_tmp, checkpoints_dir / "last")
    _fsync_dir(checkpoints_dir)
    _prune(checkpoints_dir, keep, protect=name)
    return checkpoints_dir / name


def _prune(checkpoints_dir: Path, keep: int, protect: str) -> None:
    if keep > 0:
        steps = sorted(p for p in checkpoints_dir.glob(f"{STEP_PREFIX}*") if p.is_dir())
        for old in steps[:-keep]:
            if old.name != protect:
                shutil.rmtree(old, ignore_errors=True)
    # temporary entries left by a killed writer
    for stale in [
        *checkpoints_dir.glob(f".{STEP_PREFIX}*.tmp-*"),
        *checkpoints_dir.glob(f".{STEP_PREFIX}*.old-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    for link in checkpoints_dir.glob(".last.tmp-*"):
        link.unlink(missing_ok=True)


def find_last_checkpoint(run_dir: Path) -> Path | None:
    """``RUN_DIR/checkpoints/last`` resolved, or None when the run has no checkpoint yet."""
    last = run_dir / "checkpoints" / "last"
    if not last.exists():
        if last.is_symlink():
            raise CheckpointError(f"{last}: points at a missing directory ({os.readlink(last)})")
        return None
    return last.resolve()


def load_training_state(
    checkpoint_dir: Path, model: torch.nn.Module
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load raw weights into ``model`` and return ``(training_state, progress)``.

    Raises:
        CheckpointError: naming the missing, truncated or mismatched file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    state_dir = checkpoint_dir / TRAINING_STATE_NAME
    for fname in ("model.safetensors", "state.pt", "progress.json"):
        if not (state_dir / fname).exists():
            raise CheckpointError(f"{state_dir / fname}: missing (cannot resume)")
    weights = state_dir / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except SafetensorError as exc:
        raise CheckpointError(f"{weights}: unreadable (truncated or corrupt?): {exc}") from None
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: does not match the model: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not match the model: "
            f"missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )
    try:
        state = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zip files
        raise CheckpointError(f"{state_dir / 'state.pt'}: unreadable: {exc}") from None
    try:
        with open(state_dir / "progress.json") as f:
            progress = json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_dir / 'progress.json'}: not valid JSON: {exc}") from None
    return state, progress
