"""Training configuration: one dataclass, validated on construction, saved as JSON with each run.

Fields left at ``None`` take the value of the preset's training recipe (``get_preset(policy,
preset).train``, declared beside the policy's presets, e.g. ``policies/ebt/presets.py``), so
``--preset tiny`` gives a short run that learns quickly on a CPU and ``--preset paper`` gives the
recipe of method.md (AdamW lr 1e-4, weight decay 1e-6, 500 warm-up steps, batch 64).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import tyro

from ebt_policy.errors import ConfigError


def _recipe(policy: str, preset: str) -> Any:
    """The training recipe of a policy preset (ConfigError naming an unknown policy or preset)."""
    from ebt_policy.policies import get_preset  # lazy: the policies import torch

    return get_preset(policy, preset).train


@dataclass
class TrainConfig:
    """Everything `ebt-policy train` needs. Every field is a CLI flag (``--batch-size 64``)."""

    dataset: str
    """Episode store to train on (a ``.zarr`` directory written by EpisodeStore)."""
    out: str
    """Run directory: config.json, metrics.jsonl, checkpoints/ (checkpoints/last is complete)."""
    policy: str = "ebt"
    """Policy name known to ``ebt_policy.policies.make_policy_config``."""
    preset: str = "tiny"
    """Size preset of the policy (tiny|small|paper|mlp); also picks the training recipe."""
    # not a flag itself: the CLI fills it from --policy-cfg.FIELD flags
    policy_overrides: tyro.conf.Suppress[dict[str, Any]] = field(default_factory=dict)
    """Policy config fields to override (the CLI fills this from ``--policy-cfg.*`` flags)."""
    steps: int = 1000
    """Optimiser steps in total (the LR schedule spans these)."""
    minutes: float | None = None
    """Optional wall-time budget for this invocation; stops (and saves) when reached. The LR
    schedule still spans ``steps``: pick steps that roughly fit the budget for a full cosine."""
    batch_size: int | None = None
    """Global batch size (split evenly across DDP processes). None: from the preset."""
    seed: int = 0
    """Seeds model init, data order (a function of seed and epoch) and the descent noise."""
    resume: bool = False
    """Continue from OUT/checkpoints/last (fresh start if there is none)."""
    device: Literal["cpu", "cuda", "auto"] = "auto"
    """auto: cuda when available."""
    obs_keys: list[str] | None = None
    """Observation keys fed to the policy. None: the store's metadata obs_keys (low_dim + rgb)."""
    lr: float | None = None
    """Peak learning rate of AdamW. None: from the preset."""
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int | None = None
    """Linear warm-up steps before the cosine decay. None: from the preset (at most steps // 5)."""
    min_lr_ratio: float = 0.0
    """Learning rate at the end of the cosine, as a fraction of lr."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    ema: bool = True
    """Keep an EMA of the weights; checkpoints' model.safetensors hold the EMA weights."""
    ema_power: float = 0.75
    """EMA warm-up: decay = 1 - (1 + k / ema_inv_gamma) ** -ema_power after k updates."""
    ema_inv_gamma: float = 1.0
    ema_max_decay: float = 0.9999
    ema_min_decay: float = 0.0
    amp: bool = False
    """bf16 autocast for the forward pass and the energy-descent gradients (CPU or CUDA)."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation loss (at least one when > 0)."""
    val_every: int = 200
    """Steps between validation losses (0: never; also run at the end)."""
    val_batches: int = 8
    """Batches per validation (at most; fewer if the held-out episodes are short)."""
    log_every: int = 10
    """Steps between metrics lines in metrics.jsonl (the progress bar updates every step)."""
    save_every: int = 500
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 3
    """How many step checkpoints to keep (the newest; 0 keeps all)."""
    num_workers: int = 0
    """DataLoader worker processes (exact resume is guaranteed with 0)."""
    in_memory: bool | None = None
    """Load the store into RAM (None: let WindowDataset decide)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    tensorboard: bool = True
    """Also log to OUT/tensorboard when the tensorboard package is installed."""
    find_unused_parameters: bool = False
    """DDP option; needed only when some parameters get no gradient."""

    def __post_init__(self) -> None:
        _recipe(self.policy, self.preset)  # the policy and its preset must exist
        if not isinstance(self.policy_overrides, dict):
            raise ConfigError("policy_overrides: expected a dict of policy config fields")
        checks = [
            ("steps", self.steps >= 1, "at least 1"),
            ("minutes", self.minutes is None or self.minutes > 0, "positive"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "at least 1"),
            ("lr", self.lr is None or self.lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]"),
            ("grad_clip", self.grad_clip >= 0, "non-negative"),
            ("ema_power", self.ema_power > 0, "positive"),
            ("ema_inv_gamma", self.ema_inv_gamma > 0, "positive"),
            ("ema_max_decay", 0.0 <= self.ema_max_decay <= 1.0, "in [0, 1]"),
            ("ema_min_decay", 0.0 <= self.ema_min_decay <= self.ema_max_decay, "in [0, max]"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("val_every", self.val_every >= 0, ">= 0"),
            ("val_batches", self.val_batches >= 1, "at least 1"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("save_every", self.save_every >= 0, ">= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, ">= 0"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected {expected}")
        if self.warmup_steps is not None and self.warmup_steps >= self.steps:
            raise ConfigError(
                f"warmup_steps: got {self.warmup_steps}, expected fewer than steps ({self.steps})"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas: got {self.betas!r}, expected two values in [0, 1)")

    def resolved(self) -> TrainConfig:
        """A copy with every preset-dependent ``None`` replaced by its value."""
        recipe = _recipe(self.policy, self.preset)
        warmup = self.warmup_steps
        if warmup is None:
            warmup = min(recipe.warmup_steps, self.steps // 5)
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else recipe.lr,
            batch_size=self.batch_size if self.batch_size is not None else recipe.batch_size,
            warmup_steps=warmup,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; ConfigError naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"train config: unknown keys {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# Fields that may differ between the original run and a resumed one: they do not change the
# optimisation (where to run, how much to print, how long this invocation may take).
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "steps",  # the LR schedule is re-planned for the new total (see train())
        "minutes",
        "device",
        "num_workers",
        "progress",
        "tensorboard",
        "log_every",
        "save_every",
        "keep_checkpoints",
        "val_every",
        "val_batches",
        "in_memory",
        "dataset",
        "out",
    }
)
