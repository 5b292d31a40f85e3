"""The training loop: read it top to bottom.

``train(cfg)`` opens the episode store, builds the policy with the store's normalisation stats,
splits episodes into train/validation, and runs ``train_step`` until ``cfg.steps`` (or the
``cfg.minutes`` budget), then ``if log / if validate / if checkpoint``. Multi-process training
uses the same function: under ``torchrun`` it joins the process group (gloo on CPU, nccl on CUDA),
wraps the policy in DistributedDataParallel and shards batches with DistributedSampler; only
rank 0 writes.

Data order is a deterministic function of ``(seed, epoch)`` (DistributedSampler's permutation), and
a checkpoint records the epoch and the batch index within it, so ``--resume`` continues with exactly
the batches (and, with RNG states restored, exactly the descent noise) an uninterrupted run would
have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from ebt_policy.errors import CheckpointError, ConfigError, DatasetError
from ebt_policy.training import checkpoint as ckpt
from ebt_policy.training.config import RESUMABLE_CHANGES, TrainConfig

# ----------------------------------------------------------------------------------------------
# small pieces


class LossModule(torch.nn.Module):
    """Routes ``forward`` to ``policy.compute_loss`` so DistributedDataParallel sees the call.

    DDP prepares its gradient all-reduce inside ``forward``; calling ``compute_loss`` on the
    wrapped policy directly would bypass it.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.policy.compute_loss(batch)


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose iteration can start part-way through an epoch.

    The permutation of epoch ``e`` is ``torch.randperm`` seeded with ``seed + e`` (the parent's
    rule), the same in every process; ``start_index`` skips the samples already consumed.
    """

    start_index: int = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def ema_decay(num_updates: int, cfg: TrainConfig) -> float:
    """Warm-up EMA decay after ``num_updates`` averaged updates (0 on the first one).

    decay = 1 - (1 + k / inv_gamma) ** -power, clamped to [min_decay, max_decay]: the average
    follows the weights closely early in training and slows to max_decay later (power 0.75 as in
    method.md, the schedule Diffusion Policy uses).
    """
    k = max(0, num_updates - 1)
    value = 1.0 - (1.0 + k / cfg.ema_inv_gamma) ** -cfg.ema_power
    return float(min(cfg.ema_max_decay, max(cfg.ema_min_decay, value)))


def make_ema(policy: torch.nn.Module, cfg: TrainConfig) -> AveragedModel:
    """EMA of the policy's parameters with torch's AveragedModel (buffers follow the policy)."""

    def multi_avg_fn(ema_params: list, params: list, num_averaged: torch.Tensor) -> None:
        # the library's EMA update with this step's warm-up decay
        get_ema_multi_avg_fn(ema_decay(int(num_averaged), cfg))(ema_params, params, num_averaged)

    return AveragedModel(policy, multi_avg_fn=multi_avg_fn, use_buffers=False)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from ~0 to lr, then cosine down to ``min_lr_ratio * lr`` at ``cfg.steps``."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    assert cfg.lr is not None and cfg.warmup_steps is not None  # resolved config
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(1, cfg.steps - cfg.warmup_steps), eta_min=cfg.lr * cfg.min_lr_ratio
    )
    if cfg.warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=cfg.warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[cfg.warmup_steps])


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a (nested) batch of tensors to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the step


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
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        # EBT's loss differentiates through energy-descent steps (second-order gradients)
        loss, metrics = model(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} (not finite)")
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
        scalar = _scalar(value)
        if scalar is not None and key not in out:
            out[key] = scalar
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


# ----------------------------------------------------------------------------------------------
# setup helpers


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    import torch.distributed as dist

    dist_info = _Dist(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world_size,
    )
    if device_kind == "cuda":  # before init, so NCCL binds this process to its own GPU
        torch.cuda.set_device(dist_info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        dist_info.owns_group = True
    return dist_info


def _resolve_device(name: str, dist_info: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(dist_info.local_rank)
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def _load_stats(store: Any, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Normalisation stats from the store's metadata; computed (not written) for missing keys."""
    from ebt_policy.datasets import compute_stats
    from ebt_policy.datasets.stats import STAT_NAMES

    keys = [k for k in keys if not store.is_rgb(k)]  # images normalise to [-1, 1] without stats
    stored = store.metadata.get("stats") or {}
    missing = [k for k in keys if k not in stored]
    stats = {k: {s: np.asarray(stored[k][s]) for s in STAT_NAMES} for k in keys if k in stored}
    if missing:
        computed = compute_stats(store, keys=missing, write=False)
        stats.update({k: {s: np.asarray(v) for s, v in computed[k].items()} for k in missing})
    return stats


def _default_obs_keys(store: Any) -> list[str]:
    obs_keys = store.metadata.get("obs_keys")
    if isinstance(obs_keys, dict):
        keys = list(obs_keys.get("low_dim", [])) + list(obs_keys.get("rgb", []))
        if keys:
            return keys
    return [k for k in store.keys if k != "action"]


def _check_resume_compatible(
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
    current = cfg.to_dict()
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


class _MetricsLog:
    """metrics.jsonl always; TensorBoard when importable and enabled. Rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step >= 0 and self.path.exists():
            # drop lines logged after the checkpoint we resume from: they will be re-logged
            kept = []
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------
# train


def train(cfg: TrainConfig) -> Path:
    """Train a policy on an episode store; returns the run directory.

    Writes ``OUT/config.json`` (resolved train + policy config), ``OUT/metrics.jsonl`` and
    ``OUT/checkpoints/step_XXXXXXXX`` with ``OUT/checkpoints/last`` pointing at the newest complete
    one. Under ``torchrun`` (WORLD_SIZE > 1) all processes run this and only rank 0 writes.

    Raises:
        DatasetError, ConfigError, CheckpointError: bad store, settings or checkpoint.
    """
    from ebt_policy.datasets import EpisodeStore, WindowDataset, split_episodes
    from ebt_policy.policies import make_policy, make_policy_config

    warmup_explicit = cfg.warmup_steps is not None
    cfg = cfg.resolved()
    requested = cfg.device
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dist_info = _init_distributed(requested)
    stop_request = _StopRequest()  # Ctrl-C / SIGTERM: save at the next step boundary
    try:
        device = _resolve_device(requested, dist_info)
        assert cfg.batch_size is not None and cfg.lr is not None
        if cfg.batch_size % dist_info.world_size:
            raise ConfigError(
                f"batch_size: {cfg.batch_size} does not split evenly over "
                f"{dist_info.world_size} processes"
            )
        run_dir = Path(cfg.out)
        checkpoints_dir = run_dir / "checkpoints"

        # ---- resume or fresh start
        last = ckpt.find_last_checkpoint(run_dir)
        if last is not None and not cfg.resume:
            raise ConfigError(
                f"out: {run_dir} already has checkpoints; pass --resume to continue "
                "or choose a new --out"
            )
        resume_from = last if cfg.resume else None
        if cfg.resume and last is None and dist_info.is_main:
            print(f"note: nothing to resume in {run_dir}; starting a fresh run", file=sys.stderr)
        saved_ckpt_config: dict[str, Any] | None = None
        if resume_from is not None:
            from ebt_policy.policies.checkpoint import read_checkpoint_config

            saved_ckpt_config = read_checkpoint_config(resume_from)

        # ---- data
        store = EpisodeStore.open(cfg.dataset, mode="r")
        obs_keys = list(cfg.obs_keys) if cfg.obs_keys else _default_obs_keys(store)
        unknown = [k for k in obs_keys if k not in store.keys]
        if unknown:
            raise DatasetError(
                f"{cfg.dataset}: obs keys {unknown} not in the store (has {store.keys})"
            )
        cfg = dataclasses.replace(cfg, obs_keys=obs_keys)
        if saved_ckpt_config is not None:
            cfg = _check_resume_compatible(
                saved_ckpt_config.get("train_config", {}), cfg, resume_from, warmup_explicit
            )
        shape_meta = store.shape_meta(obs_keys)
        stats = _load_stats(store, [*obs_keys, "action"])
        dataset_metadata = {k: v for k, v in store.metadata.items() if k != "stats"}

        # ---- policy (identical init on every rank; DDP also broadcasts rank 0's weights)
        seed_everything(cfg.seed)
        policy_cfg = make_policy_config(cfg.policy, preset=cfg.preset, **cfg.policy_overrides)
        if saved_ckpt_config is not None:
            saved_policy = saved_ckpt_config["policy"]["config"]
            current = json.loads(json.dumps(dataclasses.asdict(policy_cfg)))
            differing = sorted(k for k in current if saved_policy.get(k) != current[k])
            if differing:
                details = ", ".join(
                    f"{k}: {saved_policy.get(k)!r} -> {current[k]!r}" for k in differing
                )
                raise ConfigError(
                    f"--resume from {resume_from}: the policy config differs from the "
                    f"checkpoint's ({details})"
                )
        policy = make_policy(policy_cfg, shape_meta, stats=stats).to(device)

        if cfg.val_fraction > 0 and store.n_episodes >= 2:
            train_ids, val_ids = split_episodes(
                store.n_episodes, val_fraction=cfg.val_fraction, seed=cfg.seed
            )
        else:
            train_ids, val_ids = list(range(store.n_episodes)), []
        window = {"n_obs_steps": policy.n_obs_steps, "horizon": policy.horizon}
        train_set = WindowDataset(
            cfg.dataset, obs_keys, episodes=train_ids, in_memory=cfg.in_memory, **window
        )
        per_rank_batch = cfg.batch_size // dist_info.world_size
        if len(train_set) < cfg.batch_size:
            raise DatasetError(
                f"{cfg.dataset}: {len(train_set)} training windows, fewer than one batch "
                f"({cfg.batch_size}); lower --batch-size or add episodes"
            )
        sampler = ResumableSampler(
            train_set,
            num_replicas=dist_info.world_size,
            rank=dist_info.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        loader = DataLoader(
            train_set,
            batch_size=per_rank_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            # Its own generator: creating an iterator then draws the workers' base seed from it,
            # not from the global RNG (which would shift the descent noise after a resume).
            generator=torch.Generator(),
        )
        val_loader = None
        if len(val_ids) and dist_info.is_main:
            val_set = WindowDataset(
                cfg.dataset, obs_keys, episodes=val_ids, in_memory=cfg.in_memory, **window
            )
            if len(val_set):
                val_loader = DataLoader(
                    val_set, batch_size=per_rank_batch, shuffle=False, num_workers=cfg.num_workers
                )

        # ---- optimisation
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        scheduler = make_scheduler(optimizer, cfg)
        ema = make_ema(policy, cfg) if cfg.ema else None
        loss_model: torch.nn.Module = LossModule(policy)
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            loss_model = DistributedDataParallel(
                loss_model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        amp_dtype = torch.bfloat16
        autocast = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=cfg.amp)

        # ---- restore or seed the training RNG (different descent noise per rank)
        step, epoch, batch_in_epoch = 0, 0, 0
        if resume_from is not None:
            state, progress = ckpt.load_training_state(resume_from, policy)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                if "ema" not in state:
                    raise CheckpointError(f"{resume_from}: training state has no EMA")
                ema.load_state_dict(state["ema"])
            if saved_ckpt_config["train_config"].get("steps") != cfg.steps:
                # a new total: re-plan warm-up + cosine for it and fast-forward to this step
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr
                    group.pop("initial_lr", None)
                scheduler = make_scheduler(optimizer, cfg)
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(int(progress["step"])):
                        scheduler.step()
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
        else:
            seed_everything(cfg.seed + 1_000_003 * dist_info.rank)

        # ---- run directory (rank 0 writes)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = {
                "train": cfg.to_dict(),
                "policy": {"name": cfg.policy, "config": dataclasses.asdict(policy_cfg)},
                "shape_meta": shape_meta,
                "world_size": dist_info.world_size,
                "per_process_batch_size": per_rank_batch,
                "n_train_episodes": len(train_ids),
                "n_val_episodes": len(val_ids),
                "n_train_windows": len(train_set),
                "n_parameters": sum(p.numel() for p in policy.parameters()),
                "device": str(device),
                "dataset_metadata": dataset_metadata,
            }
            tmp = run_dir / ".config.json.tmp"
            tmp.write_text(json.dumps(resolved, indent=2, default=_json_default))
            os.replace(tmp, run_dir / "config.json")
        metrics_log = _MetricsLog(
            run_dir,
            dist_info.is_main,
            cfg.tensorboard,
            resume_step=step if resume_from is not None else -1,
        )

        def save(step_now: int, epoch_now: int, batch_now: int) -> None:
            rng_all = [ckpt.rng_state()]
            if dist_info.enabled:
                import torch.distributed as dist

                rng_all = [None] * dist_info.world_size
                dist.all_gather_object(rng_all, ckpt.rng_state())
            if not dist_info.is_main:
                return
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_all,
            }
            if ema is not None:
                training_state["ema"] = ema.state_dict()
            progress = {
                "step": step_now,
                "epoch": epoch_now,
                "batch_in_epoch": batch_now,
                "seed": cfg.seed,
                "world_size": dist_info.world_size,
                "global_batch_size": cfg.batch_size,
            }
            ckpt.save_training_checkpoint(
                checkpoints_dir,
                step=step_now,
                model=policy,
                ema_model=ema.module if ema is not None else policy,
                training_state=training_state,
                progress=progress,
                shape_meta=shape_meta,
                dataset_metadata=dataset_metadata,
                train_config=cfg.to_dict(),
                keep=cfg.keep_checkpoints,
            )

        # ---- loop
        progress_bar = None
        if cfg.progress and dist_info.is_main:
            from tqdm.auto import tqdm

            progress_bar = tqdm(
                total=cfg.steps,
                initial=step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                # in a log file (not a terminal) every redraw is a new line: redraw rarely
                mininterval=0.1 if sys.stderr.isatty() else 15.0,
            )
        deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes else None
        start_step, saved_step = step, step if resume_from is not None else -1
        window_losses: list[float] = []
        t_last_log, step_last_log = time.perf_counter(), step
        val_seed = cfg.seed + 7_777
        stop = step >= cfg.steps
        loss_model.train()
        stop_request.__enter__()

        while not stop:
            sampler.set_epoch(epoch)
            sampler.start_index = batch_in_epoch * per_rank_batch
            loader.generator.manual_seed(cfg.seed + 1_000_003 * dist_info.rank + epoch)
            for batch in loader:
                batch = to_device(batch, device)
                out = train_step(
                    loss_model, batch, optimizer, scheduler, ema, policy, cfg, autocast
                )
                step += 1
                batch_in_epoch += 1
                window_losses.append(out["loss"])

                want_stop = stop_request.requested or (
                    deadline is not None and time.monotonic() >= deadline
                )
                if dist_info.enabled:  # all ranks must stop at the same step
                    import torch.distributed as dist

                    flag = torch.tensor([float(want_stop)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    want_stop = bool(flag.item())
                stop = want_stop or step >= cfg.steps
                if progress_bar is not None:
                    progress_bar.update(1)
                    # refresh=False: the bar redraws at tqdm's own interval, not every step
                    progress_bar.set_postfix(
                        loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}", refresh=False
                    )

                if step % cfg.log_every == 0 or stop:
                    now = time.perf_counter()
                    steps_per_s = (step - step_last_log) / max(now - t_last_log, 1e-9)
                    record = {
                        "step": step,
                        "epoch": epoch,
                        **out,
                        "loss_avg": float(np.mean(window_losses)),
                        "steps_per_s": steps_per_s,
                        "samples_per_s": steps_per_s * cfg.batch_size,
                        "time": time.time(),
                    }
                    window_losses.clear()
                    t_last_log, step_last_log = now, step
                    if (
                        val_loader is not None
                        and cfg.val_every
                        and (step % cfg.val_every == 0 or stop)
                    ):
                        record["val_loss"] = validation_loss(
                            ema.module if ema is not None else policy,
                            val_loader,
                            device,
                            autocast,
                            cfg.val_batches,
                            val_seed,
                        )
                        if progress_bar is not None:
                            progress_bar.write(
                                f"step {step}: loss {record['loss_avg']:.4f} "
                                f"val_loss {record['val_loss']:.4f}"
                            )
                    metrics_log.log(record)

                if (cfg.save_every and step % cfg.save_every == 0) or stop:
                    save(step, epoch, batch_in_epoch)
                    saved_step = step
                if stop:
                    break
            else:  # epoch exhausted
                epoch += 1
                batch_in_epoch = 0
                continue
            break

        if saved_step != step:  # e.g. resumed a finished run
            save(step, epoch, batch_in_epoch)
        if progress_bar is not None:
            progress_bar.close()
        metrics_log.close()
        if dist_info.is_main and step > start_step:
            print(f"trained {step - start_step} steps; checkpoint: {checkpoints_dir / 'last'}")
        if stop_request.requested and step < cfg.steps:
            if dist_info.is_main:
                print(f"stopped at step {step}; --resume continues", file=sys.stderr)
            raise KeyboardInterrupt
        return run_dir
    finally:
        stop_request.__exit__()
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, stop. A second: abort.

    Installed only in the main thread (signal handlers cannot be set elsewhere); restores the
    previous handlers on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step and saving a checkpoint (again to abort)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["TrainConfig", "train", "train_step", "ema_decay", "make_ema", "make_scheduler"]
