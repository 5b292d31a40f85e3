"""The small policy interface shared by EBT-Policy, the baselines and the scripted experts.

A policy offers:

* ``predict_chunk(obs_window, rows=None) -> ChunkPrediction`` for control, where ``obs_window``
  maps each observation key to an array (B, To, ...) in the env's units (images uint8 HWC) and
  ``rows`` says which batch row (env slot) each element is;
* ``start_episode(row, seed)`` when batch row ``row`` starts an episode played with env ``seed``
  (a no-op unless the policy keeps per-row state, e.g. per-episode noise);
* ``reset()`` between evaluations (clears warm starts and per-row state).

Trainable policies are also ``torch.nn.Module``s (``class P(nn.Module, Policy)``) that hold their
own normaliser and add ``name``, ``config``, ``shape_meta`` and ``compute_loss(batch) ->
(loss, metrics)``, where ``batch`` is what :class:`ebt_policy.datasets.WindowDataset` yields,
collated: ``obs`` (dict key -> (B, To, ...)), ``action`` (B, Tp, Da) in the robot's units,
``obs_pad`` (B, To) and ``action_pad`` (B, Tp) bools.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # (B,) in [0, 1], higher = less like the held-out demonstrations; None without a calibration
    # (`ebt-policy calibrate`, policies/calibration.py) or with another stopping rule than it had
    uncertainty: np.ndarray | None = None
    # (B,) with best-of-K planning: how far the K candidates lie from their mean (RMS,
    # normalised action units), the planner's own disagreement; None otherwise
    spread: np.ndarray | None = None
    # (B,) in [0, 1], higher = the observation window lies farther from every training window
    # than held-out demonstration windows do (policies/novelty.py); None without an index
    # (`ebt-policy calibrate --novelty`). Depends on the observation only, not on the planner
    novelty: np.ndarray | None = None
    latency_s: float = 0.0  # wall time of this prediction
    extra: dict[str, Any] = field(default_factory=dict)


class Policy(abc.ABC):
    """What the evaluation runner and the deploy loop need from a policy.

    Subclasses set the three window sizes (as class or instance attributes) and implement
    :meth:`predict_chunk`; :meth:`reset` and :meth:`start_episode` default to doing nothing.
    """

    name: str = "policy"
    n_obs_steps: int  # To: observation frames per window
    n_action_steps: int  # Ta: actions executed per plan
    horizon: int  # Tp: chunk length

    def reset(self) -> None:  # noqa: B027 (a default, not an abstract method)
        """Forget all per-episode state (default: the policy keeps none)."""

    def start_episode(self, row: int, seed: int | None) -> None:  # noqa: B027 (a default)
        """Batch row ``row`` starts an episode played with env ``seed`` (default: nothing to do).

        Policies with per-row state (noise generators, experts) set it up here; ``seed=None``
        returns the row to its default state.
        """

    @abc.abstractmethod
    def predict_chunk(
        self, obs_window: dict[str, np.ndarray], rows: Sequence[int] | None = None
    ) -> ChunkPrediction:
        """Plan one chunk per batch element; ``rows[b]`` is the env slot of element ``b``
        (None: element ``b`` is row ``b``)."""
