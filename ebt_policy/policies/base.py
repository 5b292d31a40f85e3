"""The small policy interface shared by EBT-Policy and the baselines.

A policy is a ``torch.nn.Module`` that holds its own normaliser and offers:

* ``compute_loss(batch) -> (loss, metrics)`` for training, where ``batch`` is what
  :class:`ebt_policy.datasets.WindowDataset` yields, collated: ``obs`` (dict key -> (B, To, ...)),
  ``action`` (B, Tp, Da) in the robot's units, ``obs_pad`` (B, To) and ``action_pad`` (B, Tp) bools.
* ``predict_chunk(obs_window) -> ChunkPrediction`` for control, where ``obs_window`` maps each
  observation key to an array (B, To, ...) in the env's units (images uint8 HWC).
* ``reset()`` between episodes (clears warm starts and queues).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ChunkPrediction:
    """One planned action chunk per batch element, in the robot's units.

    ``chunk`` covers steps t-To+1 .. t-To+Tp; ``actions`` is the part to execute now,
    steps t .. t+Ta-1 (``chunk[:, To-1 : To-1+Ta]``).
    """

    actions: np.ndarray  # (B, Ta, Da)
    chunk: np.ndarray  # (B, Tp, Da)
    energy: np.ndarray | None = None  # (B,) final energy; None for policies without one
    steps: np.ndarray | None = None  # (B,) descent / denoising steps used
    grad_norm: np.ndarray | None = None  # (B,) final gradient norm
    latency_s: float = 0.0  # wall time of this prediction
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """What the evaluation runner and the deploy loop need from a policy."""

    n_obs_steps: int  # To
    n_action_steps: int  # Ta
    horizon: int  # Tp

    def reset(self) -> None: ...

    def predict_chunk(self, obs_window: dict[str, np.ndarray]) -> ChunkPrediction: ...
