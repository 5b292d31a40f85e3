"""Save and load a policy as a directory: ``config.json`` + ``model.safetensors``.

This module is what evaluation and deploy code use to get a policy back from disk, so it must not
import ``ebt_policy.training`` (deploy/ never imports training code). Training writes the same two
files into each checkpoint and adds a ``training_state/`` folder beside them, which loading ignores.

Layout of a checkpoint directory::

    config.json          {"format_version", "policy": {"name", "config"}, "shape_meta",
                          "dataset_metadata", "train_config", "step"}
                         (older format versions are converted on load: policies/schema.py)
    model.safetensors    the policy's state_dict (EMA weights, normaliser buffers included)
    calibration.json     optional: uncertainty quantiles (`ebt-policy calibrate`; loaded into
                         ``policy.calibration``, see policies/calibration.py)
    novelty.safetensors  optional: observation-novelty index (`ebt-policy calibrate --novelty`;
                         loaded into ``policy.novelty``, see policies/novelty.py)
    training_state/      optimiser, scheduler, EMA, RNG, data position (training only)

``load_policy`` accepts a run directory (``RUN_DIR`` -> ``RUN_DIR/checkpoints/last``), the
``checkpoints`` folder itself, or one checkpoint directory (``step_000100`` or ``last``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ebt_policy.errors import CheckpointError, ConfigError
from ebt_policy.models.shapes import ShapeMeta
from ebt_policy.policies.calibration import read_calibration
from ebt_policy.policies.factory import make_policy, policy_config_from_dict
from ebt_policy.policies.novelty import NOVELTY_NAME, read_novelty
from ebt_policy.policies.schema import (
    FORMAT_VERSION,
    check_checkpoint_config,
    upgrade_checkpoint_config,
)
from ebt_policy.policies.validation import check_complete
from ebt_policy.utils import atomic_directory, resolve_device, write_json_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_STATE_NAME = "training_state"


def write_policy_files(
    policy: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    shape_meta: ShapeMeta | Mapping[str, Any],
    dataset_metadata: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    step: int | None = None,
) -> None:
    """Write ``config.json`` and ``model.safetensors`` for ``policy`` into an existing directory.

    The directory as a whole is not swapped in atomically here: callers write into a temporary
    directory and rename it (see :func:`save_pretrained` and the training checkpoint writer).
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    if isinstance(shape_meta, ShapeMeta):
        shape_meta = shape_meta.to_dict()
    config = {
        "format_version": FORMAT_VERSION,
        "policy": {"name": policy.name, "config": policy.config},
        "shape_meta": shape_meta,
        "dataset_metadata": dataset_metadata or {},
        "train_config": train_config or {},
        "step": step,
    }
    write_json_atomic(directory / CONFIG_NAME, config)  # to_jsonable: dataclasses, numpy, paths
    # save_model handles tied (shared) tensors, which save_file refuses.
    save_model(policy, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def save_pretrained(
    policy: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    shape_meta: ShapeMeta | Mapping[str, Any],
    dataset_metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``policy`` as a loadable directory (no training state), atomically.

    Args:
        policy: a policy built by ``ebt_policy.policies.make_policy`` (has ``name`` and ``config``).
        directory: target directory; must not exist unless ``overwrite``.
        shape_meta: the shapes the policy was built with (a ShapeMeta or its dict form).
        dataset_metadata: the episode store's metadata (lets evaluation rebuild the env).
        overwrite: replace an existing directory.

    Returns:
        The directory path.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory}: already exists (pass overwrite=True to replace it)")
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        write_policy_files(policy, tmp, shape_meta=shape_meta, dataset_metadata=dataset_metadata)
    return directory


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Find the checkpoint directory meant by ``path`` (run dir, ``checkpoints`` dir or entry)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    if (path / "checkpoints").is_dir():  # a run directory (its own config.json is the run's)
        path = path / "checkpoints"
    if path.name == "checkpoints" or (path / "last").is_symlink() or (path / "last").is_dir():
        last = path / "last"
        if not last.exists():
            raise CheckpointError(f"{path}: no complete checkpoint ('last' is missing)")
        return last.resolve()
    if not (path / CONFIG_NAME).exists() and not (path / WEIGHTS_NAME).exists():
        raise CheckpointError(
            f"{path}: not a checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME}, "
            "or a run directory with checkpoints/last)"
        )
    return path.resolve()


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of the checkpoint at ``path`` (any form load_policy takes),
    converted to the current format version whatever version wrote it."""
    directory = resolve_checkpoint_dir(path)
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        raise CheckpointError(f"{config_path}: missing")
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: expected a file, got a directory")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON (truncated?): {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{config_path}: unreadable: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    config = upgrade_checkpoint_config(config, str(config_path))
    check_checkpoint_config(config, str(config_path))
    return config


def _build_policy(config: dict[str, Any], config_path: Path) -> torch.nn.Module:
    policy_cfg_dict = dict(config["policy"]["config"])
    try:
        policy_cfg = policy_config_from_dict(policy_cfg_dict)
        check_complete(policy_cfg, policy_cfg_dict, "policy.config")
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{config_path}: policy config does not match this code: {exc}"
        ) from None
    if getattr(policy_cfg, "name", config["policy"]["name"]) != config["policy"]["name"]:
        raise CheckpointError(
            f"{config_path}: policy name {config['policy']['name']!r} does not match its config"
        )
    try:
        return make_policy(policy_cfg, config["shape_meta"], stats=None)
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{config_path}: cannot build the policy: {exc}") from None


def load_policy(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    calibration: bool = True,
    novelty: bool = True,
) -> torch.nn.Module:
    """Rebuild a policy from a checkpoint directory alone, in eval mode on ``device``.

    Args:
        path: a run directory, its ``checkpoints`` folder, or one checkpoint (``.../last``).
        device: where to put the policy (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        calibration: read ``calibration.json`` when there is one (False: ignore it, as
            ``ebt-policy calibrate`` does when it replaces one).
        novelty: read ``novelty.safetensors`` when there is one (policies/novelty.py).

    Raises:
        CheckpointError: one line naming the missing, truncated or mismatched file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    device = resolve_device(device)  # ConfigError for unknown devices and CUDA without CUDA
    directory = resolve_checkpoint_dir(path)
    config = read_checkpoint_config(directory)
    policy = _build_policy(config, directory / CONFIG_NAME)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: missing")
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: expected a file, got a directory")
    try:
        missing, unexpected = load_model(policy, str(weights_path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{weights_path}: unreadable (truncated or corrupt?): {exc}"
        ) from None
    except RuntimeError as exc:  # shape mismatches from load_state_dict
        # load_state_dict lists every mismatch; the first one names the tensor and both shapes
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        mismatches = [line for line in lines if line.startswith("size mismatch")]
        detail = mismatches[0].rstrip(".") if mismatches else lines[-1]
        if len(mismatches) > 1:
            detail += f" (and {len(mismatches) - 1} more)"
        raise CheckpointError(f"{weights_path}: does not match the config: {detail}") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_short_list(unexpected)}")
        raise CheckpointError(f"{weights_path}: does not match the config: {'; '.join(parts)}")
    # calibration.json (optional): the quantiles predict_chunk's `uncertainty` maps through
    policy.calibration = read_calibration(directory, weights_path) if calibration else None
    # novelty.safetensors (optional): the observation-novelty index behind `novelty`
    if novelty and (directory / NOVELTY_NAME).exists():
        keys = getattr(policy, "low_dim_keys", None)
        policy.novelty = read_novelty(directory, keys, getattr(policy, "n_obs_steps", None))
    policy.to(device)
    policy.eval()
    return policy


def _short_list(names: list[str] | set[str], limit: int = 4) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"
