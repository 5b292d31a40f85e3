"""The training loop: read it top to bottom.

``train(cfg)`` opens the episode store, builds the policy with the store's normalisation stats,
splits episodes into train/validation, and runs ``train_step`` until ``cfg.steps`` (or the
``cfg.minutes`` budget), then ``if log / if validate / if checkpoint``. Multi-process training
uses the same function: under ``torchrun`` it joins the process group (gloo on CPU, nccl on CUDA),
wraps the policy in DistributedDataParallel and shards batches with DistributedSampler; only
rank 0 writes.

The pieces live beside it: ``data`` (store, loaders, batch order), ``optim`` (AdamW, LR schedule,
EMA), ``resume`` (what may change on resume, saving and restoring the training state),
``distributed`` (torchrun), ``metrics`` (metrics.jsonl and TensorBoard), ``stop`` (Ctrl-C and the
time budget) and ``checkpoint`` (the checkpoint files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ebt_policy.errors import ConfigError, NumericalError
from ebt_policy.training import resume
from ebt_policy.training.config import TrainConfig
from ebt_policy.training.data import (
    batch_stream,
    load_stats,
    make_data,
    resolve_obs_keys,
    to_device,
)
from ebt_policy.training.distributed import (
    DistInfo,
    any_rank,
    process_group,
    wrap_for_training,
)
from ebt_policy.training.metrics import LogWindow, MetricsLog, scalar
from ebt_policy.training.optim import make_ema, make_optimizer, make_scheduler
from ebt_policy.training.stop import StopRequest
from ebt_policy.utils import progress_bar, resolve_device, write_json_atomic
from ebt_policy.utils.paths import check_output_path


def train_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    raw_policy: torch.nn.Module,
    cfg: TrainConfig,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """One optimisation step: loss -> backward -> clip -> AdamW -> LR schedule -> EMA.

    Args:
        model: ``LossModule(policy)``, possibly wrapped in DistributedDataParallel.
        batch: collated WindowDataset items already on the device.
        raw_policy: the unwrapped policy (what the EMA averages).
        autocast: the autocast context (bf16 with ``cfg.amp``, a no-op otherwise).

    Returns:
        Scalars for logging: loss, grad_norm, lr (the rate this step used) and the policy's metrics.

    Raises:
        NumericalError: the loss is NaN or infinite (nothing is updated).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        # EBT's loss differentiates through energy-descent steps (second-order gradients)
        loss, metrics = model(batch)
    if not torch.isfinite(loss):
        raise NumericalError(f"training loss is {loss.item()} (not finite)")
    loss.backward()
    params = [p for p in raw_policy.parameters() if p.grad is not None]
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update_parameters(raw_policy)
    out = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr)}
    for key, value in (metrics or {}).items():
        value = scalar(value)
        if value is not None and key not in out:
            out[key] = value
    return out


def validation_loss(
    policy: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    max_batches: int,
    seed: int,
) -> float:
    """Mean training objective over held-out batches, under a fixed seed.

    The descent needs gradients with respect to the chunk, so this runs with autograd on (no
    backward). ``fork_rng`` keeps the training RNG stream untouched, so validating does not change
    the training run and the number is comparable between evaluations.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            batch = to_device(batch, device)
            with autocast:
                loss, _ = policy.compute_loss(batch)
            total += float(loss.detach())
            count += 1
    return total / max(count, 1)


def train(cfg: TrainConfig) -> Path:
    """Train a policy on an episode store; returns the run directory.

    Writes ``OUT/config.json`` (resolved train + policy config), ``OUT/metrics.jsonl`` and
    ``OUT/checkpoints/step_XXXXXXXX`` with ``OUT/checkpoints/last`` pointing at the newest complete
    one. Under ``torchrun`` (WORLD_SIZE > 1) all processes run this and only rank 0 writes.

    Raises:
        DatasetError, ConfigError, CheckpointError: bad store, settings or checkpoint.
        KeyboardInterrupt: stopped by Ctrl-C / SIGTERM (after saving a checkpoint).
    """
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies import make_policy, make_policy_config
    from ebt_policy.policies.checkpoint import read_checkpoint_config

    dist_info = DistInfo.from_env()
    warmup_explicit = cfg.warmup_steps is not None
    cfg = cfg.resolved()
    device = resolve_device(cfg.device, local_rank=dist_info.local_rank)
    check_output_path(cfg.out, "dir", "TrainConfig.out")
    # on any exit: restore the signal handlers, close the metrics log, leave the process group
    cleanup = contextlib.ExitStack()
    with cleanup:
        cleanup.enter_context(process_group(dist_info, device))
        assert cfg.batch_size is not None and cfg.lr is not None  # resolved config
        if cfg.batch_size % dist_info.world_size:
            raise ConfigError(
                f"batch_size: {cfg.batch_size} does not split evenly over "
                f"{dist_info.world_size} processes"
            )
        run_dir = Path(cfg.out)
        checkpoints_dir = run_dir / "checkpoints"
        resume_from = resume.find_resume_checkpoint(cfg, dist_info)
        saved = read_checkpoint_config(resume_from) if resume_from is not None else None

        # ---- data: the store's keys and stats; the config the run saves names the keys
        store = EpisodeStore.open(cfg.dataset, mode="r")
        obs_keys = resolve_obs_keys(store, cfg)
        cfg = dataclasses.replace(cfg, obs_keys=obs_keys)
        if saved is not None:
            cfg = resume.check_train_config(
                saved.get("train_config", {}), cfg, resume_from, warmup_explicit
            )
        shape_meta = store.shape_meta(obs_keys)
        stats = load_stats(store, [*obs_keys, "action"])
        dataset_metadata = {k: v for k, v in store.metadata.items() if k != "stats"}

        # ---- policy (identical init on every rank; DDP also broadcasts rank 0's weights)
        resume.seed_everything(cfg.seed)
        policy_cfg = make_policy_config(cfg.policy, preset=cfg.preset, **cfg.policy_overrides)
        if saved is not None:
            resume.check_policy_config(saved["policy"]["config"], policy_cfg, resume_from)
        policy = make_policy(policy_cfg, shape_meta, stats=stats).to(device)
        data = make_data(cfg, store, obs_keys, policy, dist_info, device)

        # ---- optimisation
        optimizer = make_optimizer(policy, cfg)
        ema = make_ema(policy, cfg) if cfg.ema else None
        trainee = resume.Trainee(policy, optimizer, make_scheduler(optimizer, cfg), ema)
        loss_model = wrap_for_training(policy, dist_info, device, cfg.find_unused_parameters)
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp)

        # ---- restore, or seed the training RNG (different descent noise per rank)
        if resume_from is not None:
            saved_steps = saved["train_config"].get("steps")
            step, epoch, batch_in_epoch = resume.restore_training_state(
                resume_from, trainee, cfg, saved_steps, dist_info
            )
        else:
            step, epoch, batch_in_epoch = 0, 0, 0
            resume.seed_everything(cfg.seed + 1_000_003 * dist_info.rank)
        files = {"shape_meta": shape_meta, "dataset_metadata": dataset_metadata}
        save = functools.partial(
            resume.save_checkpoint, checkpoints_dir, trainee, cfg, dist_info, files
        )

        # ---- run directory (rank 0 writes)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = {
                "train": cfg.to_dict(),
                "policy": {"name": cfg.policy, "config": dataclasses.asdict(policy_cfg)},
                "shape_meta": shape_meta,
                "world_size": dist_info.world_size,
                "per_process_batch_size": data.per_rank_batch,
                "n_train_episodes": len(data.train_ids),
                "n_val_episodes": len(data.val_ids),
                "n_train_windows": data.n_train_windows,
                "n_parameters": sum(p.numel() for p in policy.parameters()),
                "device": str(device),
                "dataset_metadata": dataset_metadata,
            }
            write_json_atomic(run_dir / "config.json", resolved)
        resume_step = step if resume_from is not None else -1
        metrics_log = cleanup.enter_context(
            MetricsLog(run_dir, dist_info.is_main, cfg.tensorboard, resume_step=resume_step)
        )

        # ---- loop
        eval_policy = ema.module if ema is not None else policy
        batches = batch_stream(data, cfg.seed, dist_info.rank, epoch, batch_in_epoch)
        start_step, saved_step = step, step if resume_from is not None else -1
        stop = step >= cfg.steps
        loss_model.train()
        show_bar = cfg.progress and dist_info.is_main
        bar_fields = {"loss": "-", "lr": "-", "steps/s": "-"}
        stop_request = cleanup.enter_context(StopRequest(cfg.minutes))
        with progress_bar(
            "train", cfg.steps, completed=step, fields=bar_fields, enabled=show_bar
        ) as bar:
            window = LogWindow(step, cfg.batch_size)
            while not stop:
                epoch, batch_in_epoch, batch = next(batches)
                batch = to_device(batch, device)
                try:
                    out = train_step(
                        loss_model, batch, optimizer, trainee.scheduler, ema, policy, cfg, autocast
                    )
                except NumericalError as exc:  # name the training step (lr too high? NaN data?)
                    exc.args = (f"training step {step + 1}: {exc}",)
                    raise
                step += 1
                window.add(out["loss"])
                stop = any_rank(stop_request.wanted(), dist_info, device) or step >= cfg.steps
                bar.update(1, loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}")

                if step % cfg.log_every == 0 or stop:
                    record = window.close(step, epoch, out)
                    bar.update(**{"steps/s": f"{record['steps_per_s']:.1f}"})
                    # validation runs on logging steps only: its number joins that step's line
                    validate = cfg.val_every and (step % cfg.val_every == 0 or stop)
                    if validate and data.val_loader is not None:
                        record["val_loss"] = validation_loss(
                            eval_policy,
                            data.val_loader,
                            device,
                            autocast,
                            cfg.val_batches,
                            seed=cfg.seed + 7_777,
                        )
                        if show_bar:
                            print(
                                f"step {step}: loss {record['loss_avg']:.4f} "
                                f"val_loss {record['val_loss']:.4f}"
                            )
                    metrics_log.log(record)

                if (cfg.save_every and step % cfg.save_every == 0) or stop:
                    save(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch)
                    saved_step = step

        if saved_step != step:  # e.g. resumed a finished run
            save(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch)
        if dist_info.is_main and step > start_step:
            print(f"trained {step - start_step} steps; checkpoint: {checkpoints_dir / 'last'}")
        if stop_request.requested and step < cfg.steps:
            if dist_info.is_main:
                print(f"stopped at step {step}; --resume continues", file=sys.stderr)
            raise KeyboardInterrupt
    return run_dir
