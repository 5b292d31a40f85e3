"""Resuming a run exactly: which settings may change, and the state saved and restored.

A checkpoint holds the raw weights, the optimiser, scheduler and EMA states, every rank's RNG
states and the data position (epoch, batch index within it), so ``--resume`` continues with the
batches and the descent noise an uninterrupted run would have used: the resumed run's weights
equal the straight run's bit for bit (on CPU). Settings that would change the optimisation must
stay as they were (:data:`~ebt_policy.training.config.RESUMABLE_CHANGES` lists those that may
change); ``steps`` may grow, and the LR schedule is then re-planned for the new total.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ebt_policy.errors import CheckpointError, ConfigError
from ebt_policy.training import checkpoint as ckpt
from ebt_policy.training.config import RESUMABLE_CHANGES, TrainConfig
from ebt_policy.training.distributed import DistInfo, gather_to_all
from ebt_policy.training.optim import make_scheduler
from ebt_policy.utils import to_jsonable


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_resume_checkpoint(cfg: TrainConfig, dist_info: DistInfo) -> Path | None:
    """The checkpoint to resume from: ``OUT/checkpoints/last`` with ``--resume``, else None.

    Raises:
        ConfigError: ``OUT`` already has checkpoints but ``--resume`` was not given.
    """
    run_dir = Path(cfg.out)
    last = ckpt.find_last_checkpoint(run_dir)
    if last is not None and not cfg.resume:
        raise ConfigError(
            f"out: {run_dir} already has checkpoints; pass --resume to continue "
            "or choose a new --out"
        )
    if cfg.resume and last is None and dist_info.is_main:
        print(f"note: nothing to resume in {run_dir}; starting a fresh run", file=sys.stderr)
    return last if cfg.resume else None


def check_train_config(
    saved: dict[str, Any], cfg: TrainConfig, where: Path, warmup_explicit: bool
) -> TrainConfig:
    """ConfigError listing settings that would change the optimisation; returns ``cfg`` with
    the original warm-up kept when only ``steps`` changed (the preset default depends on it)."""
    if saved.get("steps") != cfg.steps and not warmup_explicit and "warmup_steps" in saved:
        if saved["warmup_steps"] >= cfg.steps:
            raise ConfigError(
                f"steps: {cfg.steps} is within the original warm-up ({saved['warmup_steps']})"
            )
        cfg = dataclasses.replace(cfg, warmup_steps=saved["warmup_steps"])
    current = to_jsonable(cfg.to_dict())  # as saved: tuples in policy_overrides are lists
    differing = sorted(
        k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]
    )
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differing)
        raise ConfigError(
            f"--resume from {where}: these settings differ from the checkpoint's ({details}); "
            "use the original values or a new --out"
        )
    return cfg


def check_policy_config(saved: dict[str, Any], policy_cfg: Any, where: Path) -> None:
    """ConfigError listing the policy config fields that differ from the checkpoint's."""
    current = to_jsonable(policy_cfg)
    differing = sorted(k for k in current if saved.get(k) != current[k])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differing)
        raise ConfigError(
            f"--resume from {where}: the policy config differs from the checkpoint's ({details})"
        )


@dataclasses.dataclass
class Trainee:
    """The objects a run trains: their states go into each checkpoint and come back on resume."""

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None


def restore_training_state(
    checkpoint_dir: Path,
    trainee: Trainee,
    cfg: TrainConfig,
    saved_steps: int | None,
    dist_info: DistInfo,
) -> tuple[int, int, int]:
    """Load a checkpoint's training state into ``trainee`` (and this rank's RNG states).

    Args:
        saved_steps: ``steps`` of the run that wrote the checkpoint; when ``cfg.steps`` differs
            ``trainee.scheduler`` is replaced by one planned for the new total, fast-forwarded to
            the saved step.

    Returns:
        ``(step, epoch, batch_in_epoch)``: the data position to continue from.
    """
    state, progress = ckpt.load_training_state(checkpoint_dir, trainee.policy)
    trainee.optimizer.load_state_dict(state["optimizer"])
    trainee.scheduler.load_state_dict(state["scheduler"])
    if trainee.ema is not None:
        if "ema" not in state:
            raise CheckpointError(f"{checkpoint_dir}: training state has no EMA")
        trainee.ema.load_state_dict(state["ema"])
    if saved_steps != cfg.steps:
        # a new total: re-plan warm-up + cosine for it and fast-forward to this step
        for group in trainee.optimizer.param_groups:
            group["lr"] = cfg.lr
            group.pop("initial_lr", None)
        trainee.scheduler = make_scheduler(trainee.optimizer, cfg)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(int(progress["step"])):
                trainee.scheduler.step()
    step, epoch = int(progress["step"]), int(progress["epoch"])
    batch_in_epoch = int(progress["batch_in_epoch"])
    rngs = state["rng"]
    if len(rngs) == dist_info.world_size:
        ckpt.set_rng_state(rngs[dist_info.rank])
    else:
        warnings.warn(
            f"resuming {len(rngs)}-process run with {dist_info.world_size} processes: "
            "data order is kept, descent noise is re-seeded",
            stacklevel=2,
        )
        seed_everything(cfg.seed + 1_000_003 * (dist_info.rank + 1) + step)
    return step, epoch, batch_in_epoch


def save_checkpoint(
    checkpoints_dir: Path,
    trainee: Trainee,
    cfg: TrainConfig,
    dist_info: DistInfo,
    files: dict[str, Any],
    *,
    step: int,
    epoch: int,
    batch_in_epoch: int,
) -> None:
    """Gather every rank's RNG state and write the checkpoint from rank 0 (all ranks call this).

    ``model.safetensors`` holds the EMA weights (the policy's when EMA is off). ``files``: the
    ``shape_meta`` and ``dataset_metadata`` the policy's config.json records.
    """
    rng_all = gather_to_all(ckpt.rng_state(), dist_info)
    if not dist_info.is_main:
        return
    ema = trainee.ema
    training_state = {
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": trainee.scheduler.state_dict(),
        "rng": rng_all,
    }
    if ema is not None:
        training_state["ema"] = ema.state_dict()
    progress = {
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "seed": cfg.seed,
        "world_size": dist_info.world_size,
        "global_batch_size": cfg.batch_size,
    }
    ckpt.save_training_checkpoint(
        checkpoints_dir,
        step=step,
        model=trainee.policy,
        ema_model=ema.module if ema is not None else trainee.policy,
        training_state=training_state,
        progress=progress,
        shape_meta=files["shape_meta"],
        dataset_metadata=files["dataset_metadata"],
        train_config=cfg.to_dict(),
        keep=cfg.keep_checkpoints,
    )
