"""One rollout executor: per-row observation history, chunk queue and re-planning.

For each of ``n_rows`` rows (an env slot in evaluation, a robot in deployment) the executor keeps
the last To observations (the episode's first frame repeated To times at its start) and a queue of
planned actions. :meth:`RolloutExecutor.act` asks the policy for a chunk for exactly the rows whose
queue is empty, in one batched ``predict_chunk(window, rows=...)`` call, queues each row's Ta
actions (``ChunkPrediction.actions``) and returns one action per active row. The policy is told
which row each batch element is and, through ``start_episode(row, seed)``, when a row starts an
episode, so per-episode state (seeded noise, expert phase machines) follows its row whatever the
other rows do.

Every planned chunk is reported as a :class:`Plan` to the ``on_plan`` hook: the rows, the policy's
:class:`~ebt_policy.policies.base.ChunkPrediction` and one :class:`ChunkRecord` per row (episode
step, energy, descent steps, gradient norm, latency, spread, calibrated uncertainty, observation
novelty).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebt_policy.policies.base import ChunkPrediction, Policy

__all__ = ["ChunkRecord", "Plan", "RolloutExecutor"]


@dataclass
class ChunkRecord:
    """What the policy reported for one planned chunk of one row's episode."""

    t: int  # episode step at which the chunk was planned
    energy: float | None
    steps: int | None  # descent / denoising steps the policy used
    grad_norm: float | None
    latency_s: float  # wall time of the predict_chunk call that planned it (shared by its batch)
    batch: int  # how many rows that call planned for
    spread: float | None = None  # best-of-K candidates' disagreement (ChunkPrediction.spread)
    uncertainty: float | None = None  # calibrated score in [0, 1] (ChunkPrediction.uncertainty)
    novelty: float | None = None  # observation novelty in [0, 1] (ChunkPrediction.novelty)


@dataclass
class Plan:
    """One ``predict_chunk`` call: the rows planned for, the prediction, one record per row."""

    rows: list[int]
    prediction: ChunkPrediction
    records: list[ChunkRecord]  # one per row, in the order of ``rows``


@dataclass
class _Row:
    """One row's episode: observation history, queued actions, steps taken."""

    history: deque[dict[str, np.ndarray]]
    queue: deque[np.ndarray] = field(default_factory=deque)
    t: int = 0  # actions handed out since the episode started


def _scalar(values: np.ndarray | None, i: int, cast: type) -> Any:
    if values is None:
        return None
    v = cast(np.asarray(values).reshape(-1)[i])
    return None if isinstance(v, float) and math.isnan(v) else v


class RolloutExecutor:
    """Turns per-row observation streams into per-row action streams by planning chunks.

    Args:
        policy: a :class:`~ebt_policy.policies.base.Policy` (``n_obs_steps``, ``reset()``,
            ``start_episode(row, seed)``, ``predict_chunk(obs_window, rows=...)``).
        n_rows: how many independent rows (env slots, robots) run side by side.
        n_action_steps: execute at most this many actions of each chunk before re-planning
            (default: all of ``ChunkPrediction.actions``, i.e. the policy's Ta).
        on_plan: called with a :class:`Plan` after every ``predict_chunk`` call.

    Building the executor resets the policy. A row is idle until :meth:`start_episode`; only
    active rows are planned for and get actions.
    """

    def __init__(
        self,
        policy: Policy,
        n_rows: int = 1,
        n_action_steps: int | None = None,
        on_plan: Callable[[Plan], None] | None = None,
    ) -> None:
        self.policy = policy
        self.n_obs_steps = int(policy.n_obs_steps)
        if self.n_obs_steps < 1:
            raise ValueError(f"policy.n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if n_rows < 1:
            raise ValueError(f"n_rows must be >= 1, got {n_rows}")
        if n_action_steps is not None and n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.n_rows = int(n_rows)
        self.n_action_steps = n_action_steps
        self.on_plan = on_plan
        self.n_plans = 0  # predict_chunk calls so far
        self._rows: list[_Row | None] = [None] * self.n_rows
        self.reset()

    def reset(self) -> None:
        """Idle every row and reset the policy (forgets all per-row state)."""
        self._rows = [None] * self.n_rows
        self.policy.reset()

    def start_episode(self, row: int, obs: Mapping[str, Any], seed: int | None = None) -> None:
        """Start an episode in ``row`` from its first observation (key -> one frame).

        The history becomes To copies of ``obs``, the queue is emptied and the policy's
        ``start_episode(row, seed)`` gives the row fresh per-episode state.
        """
        first = {key: np.array(value) for key, value in obs.items()}
        self._rows[row] = _Row(history=deque([first] * self.n_obs_steps, maxlen=self.n_obs_steps))
        self.policy.start_episode(row, seed)

    def end_episode(self, row: int) -> None:
        """Idle ``row`` (its queued actions are dropped) until the next :meth:`start_episode`."""
        self._rows[row] = None

    def observe(self, row: int, obs: Mapping[str, Any]) -> None:
        """Add ``row``'s newest observation (key -> one frame) to its history."""
        self._state(row).history.append({key: np.array(value) for key, value in obs.items()})

    @property
    def active_rows(self) -> list[int]:
        """Rows with an episode running, ascending."""
        return [i for i, r in enumerate(self._rows) if r is not None]

    def needs_plan(self, row: int) -> bool:
        """True when the next :meth:`act` plans a chunk for ``row``."""
        return not self._state(row).queue

    def queued(self, row: int) -> int:
        """Actions still queued for ``row``."""
        return len(self._state(row).queue)

    def step_of(self, row: int) -> int:
        """Actions handed out to ``row`` since its episode started."""
        return self._state(row).t

    def window(self, rows: list[int]) -> dict[str, np.ndarray]:
        """The observation window of ``rows``: key -> (len(rows), To, ...)."""
        states = [self._state(r) for r in rows]
        return {
            key: np.stack([np.stack([h[key] for h in s.history]) for s in states])
            for key in states[0].history[0]
        }  # key -> (B, To, ...)

    def act(self) -> dict[int, np.ndarray]:
        """One action per active row (row -> (Da,)), planning for the rows whose queue is empty."""
        active = self.active_rows
        need = [r for r in active if not self._rows[r].queue]  # type: ignore[union-attr]
        if need:
            self.plan(need)
        actions = {}
        for r in active:
            state = self._rows[r]
            assert state is not None
            actions[r] = state.queue.popleft()
            state.t += 1
        return actions

    def plan(self, rows: list[int]) -> Plan:
        """Plan a chunk for ``rows`` now (one batched call) and replace their queues with it."""
        pred = self.policy.predict_chunk(self.window(rows), rows=rows)
        actions = np.asarray(pred.actions)
        if actions.ndim != 3 or actions.shape[0] != len(rows) or actions.shape[1] < 1:
            raise ValueError(
                f"predict_chunk returned actions of shape {actions.shape}, expected "
                f"({len(rows)}, Ta >= 1, action_dim)"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("predict_chunk returned non-finite actions")
        if self.n_action_steps is not None:
            actions = actions[:, : self.n_action_steps]
        records = []
        for i, row in enumerate(rows):
            state = self._state(row)
            state.queue = deque(actions[i])
            records.append(
                ChunkRecord(
                    t=state.t,
                    energy=_scalar(pred.energy, i, float),
                    steps=_scalar(pred.steps, i, int),
                    grad_norm=_scalar(pred.grad_norm, i, float),
                    latency_s=float(pred.latency_s),
                    batch=len(rows),
                    spread=_scalar(pred.spread, i, float),
                    uncertainty=_scalar(pred.uncertainty, i, float),
                    novelty=_scalar(pred.novelty, i, float),
                )
            )
        self.n_plans += 1
        plan = Plan(rows=list(rows), prediction=pred, records=records)
        if self.on_plan is not None:
            self.on_plan(plan)
        return plan

    def _state(self, row: int) -> _Row:
        state = self._rows[row]
        if state is None:
            raise ValueError(f"row {row} has no episode running; call start_episode first")
        return state
