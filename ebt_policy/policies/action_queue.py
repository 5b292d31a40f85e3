"""Receding-horizon execution: plan a chunk, execute its first Ta actions, then re-plan."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ebt_policy.policies.base import ChunkPrediction, Policy


class ActionQueue:
    """Feeds a control loop one action per step from chunks planned by ``policy``.

    ``act(obs_window)`` returns the next action (B, Da). When the queue is empty it calls
    ``policy.predict_chunk(obs_window)`` and queues the first ``n_action_steps`` actions of the plan
    (``ChunkPrediction.actions``), so the policy is queried once every Ta steps.
    """

    def __init__(self, policy: Policy, n_action_steps: int | None = None, **predict_kwargs: Any):
        self.policy = policy
        self.n_action_steps = int(n_action_steps or policy.n_action_steps)
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        self.predict_kwargs = predict_kwargs
        self._queue: deque[np.ndarray] = deque()
        self.last_prediction: ChunkPrediction | None = None
        self.n_plans = 0

    def reset(self) -> None:
        """Drop queued actions and reset the policy (call at the start of each episode)."""
        self._queue.clear()
        self.last_prediction = None
        self.policy.reset()

    @property
    def needs_plan(self) -> bool:
        """True when the next ``act`` will query the policy."""
        return not self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def act(self, obs_window: dict[str, np.ndarray]) -> np.ndarray:
        """Next action (B, Da) in robot units; plans a new chunk when the queue is empty."""
        if not self._queue:
            pred = self.policy.predict_chunk(obs_window, **self.predict_kwargs)
            n = min(self.n_action_steps, pred.actions.shape[1])
            for i in range(n):
                self._queue.append(pred.actions[:, i])
            self.last_prediction = pred
            self.n_plans += 1
        return self._queue.popleft()
