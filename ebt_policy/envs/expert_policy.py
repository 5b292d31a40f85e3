"""A task's scripted expert behind the :class:`~ebt_policy.policies.base.Policy` interface.

The evaluation runner drives every policy the same way, so wrapping the experts lets us check the
runner itself: the expert must score the same through the runner as it did while collecting
demonstrations. An expert is a per-episode state machine, so the wrapper keeps one expert per batch
row (one per env worker slot in the runner) and starts a fresh one, seeded like the collector
seeds it, at every episode (:meth:`ExpertPolicy.start_episode`).

It lives with the envs, not in ``ebt_policy.policies``: policies come before envs in the data flow
(a policy never imports an env), and this one is built from a task's expert.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ebt_policy.envs.collect_workers import new_expert
from ebt_policy.policies.base import ChunkPrediction, Policy


class ExpertPolicy(Policy):
    """Scripted expert as a policy: To = Ta = Tp = 1, one expert per batch row.

    Args:
        task: task name or a task spec from :func:`ebt_policy.envs.get_task`.
        seed: seed for rows used without :meth:`start_episode` (row ``r`` gets ``seed + r``).

    ``predict_chunk(obs_window, rows=None)`` takes the optional ``rows`` (which batch row each
    element is) so a caller that plans for a subset of its envs keeps each row's expert; without it
    element ``b`` is row ``b``.
    """

    name = "expert"
    n_obs_steps = 1
    n_action_steps = 1
    horizon = 1

    def __init__(self, task: str | Any, seed: int = 0) -> None:
        if isinstance(task, str):
            from ebt_policy.envs import get_task

            task = get_task(task)
        self.spec = task
        self.seed = int(seed)
        self._experts: dict[int, Any] = {}

    def reset(self) -> None:
        """Forget every row's expert; rows not started again get ``seed + row``."""
        self._experts.clear()

    def start_episode(self, row: int, seed: int | None) -> None:
        """Give batch row ``row`` a fresh expert for an episode played with env seed ``seed``."""
        self._experts[int(row)] = new_expert(self.spec, seed)

    def predict_chunk(
        self, obs_window: dict[str, np.ndarray], rows: Sequence[int] | None = None
    ) -> ChunkPrediction:
        """One expert action per batch element from the newest frame of ``obs_window``."""
        t0 = time.perf_counter()
        if not obs_window:
            raise ValueError("obs_window is empty: expected observation key -> (B, To, ...) array")
        batch = next(iter(obs_window.values())).shape[0]
        rows = list(range(batch)) if rows is None else [int(r) for r in rows]
        if len(rows) != batch:
            raise ValueError(f"rows has {len(rows)} entries but obs_window has batch {batch}")
        actions = []
        for b, row in enumerate(rows):
            if row not in self._experts:
                self.start_episode(row, self.seed + row)
            obs = {key: value[b, -1] for key, value in obs_window.items()}
            actions.append(np.asarray(self._experts[row].act(obs), dtype=np.float32))
        chunk = np.stack(actions)[:, None]  # (B, 1, Da)
        return ChunkPrediction(
            actions=chunk,
            chunk=chunk.copy(),
            latency_s=time.perf_counter() - t0,
        )
