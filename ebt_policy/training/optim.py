"""The optimiser, its learning-rate schedule and the EMA of the weights (torch's own classes)."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ebt_policy.training.config import TrainConfig


def make_optimizer(policy: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter of the policy."""
    return torch.optim.AdamW(
        policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )


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
