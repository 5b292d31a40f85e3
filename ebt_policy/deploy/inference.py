"""The inference thread of the deploy loop: plans chunks with the rollout executor, off the
control thread.

All executor calls (episode start, observing frames, planning) happen on this one thread, in the
order the control thread asked for them, so the executor needs no lock and its observation
history is exactly the fresh frames the control thread saw. Each plan becomes a
:class:`Chunk` whose actions carry due times ``t_obs + (i + offset) * dt`` from the capture time of
the newest observed frame; a plan that fails (the policy raised, returned NaN/Inf or stalled) is
reported as a :class:`PlanFailure` and the control thread decides what to do.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebt_policy.deploy.robot import META_KEYS, Observation
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.rollout import RolloutExecutor

__all__ = ["Chunk", "InferenceWorker", "NonFiniteOutput", "PlanFailure"]


class NonFiniteOutput(FloatingPointError):
    """The policy returned NaN/Inf actions (caught before the executor queues them)."""


@dataclass
class Chunk:
    """One planned chunk, timestamped for the robot."""

    id: int
    t_obs: float  # capture time of the newest frame it was planned from
    due: np.ndarray  # (Ta,) monotonic time each action is meant for
    actions: np.ndarray  # (Ta, Da)
    energy: float | None
    steps: int | None
    latency_s: float  # request to ready
    t_ready: float
    replanned: bool = False  # planned again because the first plan's energy was too high
    scale: float = 1.0  # fraction of each step to keep (the energy response "scale")
    spread: float | None = None  # best-of-K candidates' disagreement (None with one candidate)
    novelty: float | None = None  # observation novelty in [0, 1] (None without an index)


@dataclass
class PlanFailure:
    """A plan that produced no usable chunk: ``kind`` is ``nonfinite`` or ``error``."""

    kind: str
    error: BaseException
    t_ready: float


class _GuardedPolicy:
    """The policy with a NaN/Inf check on every output, so that a bad chunk is reported as a
    safety event instead of the executor's generic ValueError."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def predict_chunk(
        self, obs_window: dict[str, np.ndarray], rows: Sequence[int] | None = None
    ) -> ChunkPrediction:
        pred = self._policy.predict_chunk(obs_window, rows=rows)
        if not np.all(np.isfinite(np.asarray(pred.actions, np.float64))):
            raise NonFiniteOutput("policy returned non-finite actions")
        return pred


@contextlib.contextmanager
def _descent_steps(policy: Any, steps: int | None) -> Iterator[None]:
    """Plan with ``steps`` descent steps, then restore the policy's own setting."""
    descent = getattr(getattr(policy, "config", None), "descent", None)
    if steps is None or not hasattr(policy, "set_inference") or descent is None:
        yield
        return
    before = descent.descent_steps
    policy.set_inference(descent_steps=steps)
    try:
        yield
    finally:
        policy.set_inference(descent_steps=before)


def policy_obs(obs: Mapping[str, Any], keys: Sequence[str] | None) -> dict[str, np.ndarray]:
    """The policy inputs of a robot observation (no timestamp / seq / flags)."""
    names = keys if keys is not None else [k for k in obs if k not in META_KEYS]
    return {k: np.asarray(obs[k]) for k in names}


class InferenceWorker:
    """Runs ``policy`` on its own daemon thread for one robot (executor row 0).

    Args:
        policy: a Policy (``n_obs_steps``, ``start_episode``, ``predict_chunk``).
        dt: the control period (s), spacing of the due times.
        action_offset: action ``i`` is due at ``t_obs + (i + action_offset) * dt``.
        obs_keys: observation keys the policy reads (default: all but the meta keys).
    """

    def __init__(
        self,
        policy: Any,
        dt: float,
        action_offset: float = 0.0,
        obs_keys: Sequence[str] | None = None,
    ) -> None:
        self.policy = policy
        self.executor = RolloutExecutor(_GuardedPolicy(policy), n_rows=1)
        self.dt = float(dt)
        self.action_offset = float(action_offset)
        self.obs_keys = list(obs_keys) if obs_keys is not None else None
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.results: queue.Queue[tuple[int, Chunk | PlanFailure]] = queue.Queue()
        # episode counter: a result planned for an earlier episode (a plan still in flight when
        # that episode ended) is discarded, never executed in the next one
        self._generation = 0
        self._ids = itertools.count()
        self._t_obs = 0.0
        self._t_last_plan: float | None = None  # newest frame of the episode's last plan
        self.in_flight = False  # a plan was requested and its result not yet taken
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control-thread side
    def start_episode(self, obs: Observation, seed: int | None) -> None:
        """Start the executor's episode from ``obs`` (queued behind earlier commands); results
        of plans requested before are dropped."""
        self._generation += 1
        self.in_flight = False
        self._commands.put(("start", (obs, seed)))

    def observe(self, obs: Observation) -> None:
        """Add a fresh frame to the policy's history."""
        self._commands.put(("observe", obs))

    def request(self, descent_steps: int | None = None, replanned: bool = False) -> None:
        """Plan a chunk from the frames observed so far (with ``descent_steps`` where the policy
        has ``set_inference``); the result lands in :attr:`results`."""
        self.in_flight = True
        self._commands.put(("plan", (self._generation, time.monotonic(), descent_steps, replanned)))

    def poll(self) -> list[Chunk | PlanFailure]:
        """Results ready now (non-blocking)."""
        out = []
        while True:
            try:
                generation, result = self.results.get_nowait()
            except queue.Empty:
                break
            if generation == self._generation:
                out.append(result)
        if out:
            self.in_flight = False
        return out

    def wait(self, timeout: float) -> Chunk | PlanFailure | None:
        """The next result, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                generation, result = self.results.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return None
            if generation == self._generation:
                self.in_flight = False
                return result

    def close(self) -> None:
        """Ask the thread to finish (a stalled policy call is left to its daemon thread)."""
        self._commands.put(("quit", None))
        self._thread.join(timeout=1.0)

    # ------------------------------------------------------------------ inference thread
    def _run(self) -> None:
        while True:
            kind, arg = self._commands.get()
            if kind == "quit":
                return
            if kind == "start":
                obs, seed = arg
                self.executor.start_episode(0, policy_obs(obs, self.obs_keys), seed)
                self._t_obs = float(obs["timestamp"])
                self._t_last_plan = None
            elif kind == "observe":
                self.executor.observe(0, policy_obs(arg, self.obs_keys))
                self._t_obs = float(arg["timestamp"])
            else:
                generation, *plan_args = arg
                self.results.put((generation, self._plan(*plan_args)))

    def _plan(self, requested: float, steps: int | None, replanned: bool) -> Chunk | PlanFailure:
        t_obs = self._t_obs
        self._warm_start(t_obs, replanned)
        try:
            with _descent_steps(self.policy, steps):
                plan = self.executor.plan([0])
        except NonFiniteOutput as exc:
            return PlanFailure("nonfinite", exc, time.monotonic())
        except Exception as exc:  # the policy raised: the control thread holds, then stops
            return PlanFailure("error", exc, time.monotonic())
        now = time.monotonic()
        self._t_last_plan = t_obs
        n = self.executor.queued(0)  # Ta (or the executor's n_action_steps)
        actions = np.asarray(plan.prediction.actions, np.float64)[0, :n]  # (Ta, Da)
        record = plan.records[0]
        return Chunk(
            id=next(self._ids),
            t_obs=t_obs,
            due=t_obs + (np.arange(n) + self.action_offset) * self.dt,
            actions=actions,
            energy=record.energy,
            steps=record.steps,
            latency_s=now - requested,
            t_ready=now,
            replanned=replanned,
            spread=record.spread,
            novelty=record.novelty,
        )

    def _warm_start(self, t_obs: float, replanned: bool) -> None:
        """With an engine warm start (EBT ``--warm-start``): the next plan starts from the last
        one shifted by the control steps between their newest frames (this loop plans on a
        clock, not every Ta steps); an energy re-plan starts from noise instead (the plan it
        replaces was rejected)."""
        engine = getattr(self.policy, "engine", None)
        if engine is None or not engine.options.warm_start:
            return
        if replanned or self._t_last_plan is None:
            engine.forget(0)
        else:
            engine.advance(0, max(0, round((t_obs - self._t_last_plan) / self.dt)))
