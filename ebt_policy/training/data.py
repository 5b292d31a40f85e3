"""Training data: the episode store's observation keys and stats, the loaders, the batch stream.

Data order is a deterministic function of ``(seed, epoch)``: the sampler's permutation of epoch
``e`` is seeded with ``seed + e`` in every process, and a checkpoint records the epoch and the
batch index within it, so a resumed run continues with exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ebt_policy.errors import DatasetError
from ebt_policy.training.config import TrainConfig
from ebt_policy.training.distributed import DistInfo, ResumableSampler


def default_obs_keys(store: Any) -> list[str]:
    """The store's metadata ``obs_keys`` (low_dim + rgb), else every key but ``action``."""
    obs_keys = store.metadata.get("obs_keys")
    if isinstance(obs_keys, dict):
        keys = list(obs_keys.get("low_dim", [])) + list(obs_keys.get("rgb", []))
        if keys:
            return keys
    return [k for k in store.keys if k != "action"]


def resolve_obs_keys(store: Any, cfg: TrainConfig) -> list[str]:
    """``cfg.obs_keys`` or the store's default; DatasetError naming keys the store lacks."""
    obs_keys = list(cfg.obs_keys) if cfg.obs_keys else default_obs_keys(store)
    unknown = [k for k in obs_keys if k not in store.keys]
    if unknown:
        raise DatasetError(f"{cfg.dataset}: obs keys {unknown} not in the store (has {store.keys})")
    return obs_keys


def load_stats(store: Any, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
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


@dataclasses.dataclass
class TrainData:
    """The train/validation split and the loaders over it."""

    train_ids: list[int]
    val_ids: list[int]
    n_train_windows: int
    per_rank_batch: int
    sampler: ResumableSampler
    loader: DataLoader
    val_loader: DataLoader | None


def make_data(
    cfg: TrainConfig,
    store: Any,
    obs_keys: list[str],
    policy: torch.nn.Module,
    dist_info: DistInfo,
    device: torch.device,
) -> TrainData:
    """Split episodes (seeded), window them for ``policy`` and build the sharded loaders.

    Validation batches are built on rank 0 only (the only process that validates).
    """
    from ebt_policy.datasets import WindowDataset, split_episodes

    assert cfg.batch_size is not None  # resolved config
    if cfg.val_fraction > 0 and store.n_episodes >= 2:
        train_ids, val_ids = split_episodes(
            store.n_episodes, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
    else:
        train_ids, val_ids = list(range(store.n_episodes)), []
    window = {"n_obs_steps": policy.n_obs_steps, "horizon": policy.horizon}
    train_set = WindowDataset(
        store, obs_keys, episodes=train_ids, in_memory=cfg.in_memory, **window
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
            store, obs_keys, episodes=val_ids, in_memory=cfg.in_memory, **window
        )
        if len(val_set):
            val_loader = DataLoader(
                val_set, batch_size=per_rank_batch, shuffle=False, num_workers=cfg.num_workers
            )
    return TrainData(
        train_ids, val_ids, len(train_set), per_rank_batch, sampler, loader, val_loader
    )


def batch_stream(
    data: TrainData, seed: int, rank: int, epoch: int, batch_in_epoch: int
) -> Iterator[tuple[int, int, Any]]:
    """Batches epoch after epoch, from batch ``batch_in_epoch`` of ``epoch`` on, without end.

    Yields ``(epoch, batches of this epoch consumed, batch)``: the position a checkpoint saved
    after this batch records. Nothing is read before the first ``next``.
    """
    while True:
        data.sampler.set_epoch(epoch)
        data.sampler.start_index = batch_in_epoch * data.per_rank_batch
        data.loader.generator.manual_seed(seed + 1_000_003 * rank + epoch)
        for batch in data.loader:
            batch_in_epoch += 1
            yield epoch, batch_in_epoch, batch
        epoch += 1  # epoch exhausted
        batch_in_epoch = 0


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a (nested) batch of tensors to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
