"""The real-time control loop: one safe action per control period, whatever the policy does.

Per tick, on the calling (control) thread: read the newest observation and check it (fresh,
repeat, stale, out of order); hand fresh frames to the :class:`~ebt_policy.deploy.inference.
InferenceWorker`; take any finished chunk; pick the chunk's action due this tick (actions whose
time has passed are dropped, and when the whole chunk is used up the loop holds the last safe
action and counts the tick "over budget"); pass it through the :class:`~ebt_policy.deploy.safety.
SafetyLayer`; send it with its due time; ask for the next chunk early enough that, at the
steady-state planning latency (warm-up excluded), the queue does not run dry; sleep to the next
deadline (sleep, then spin). The watchdog holds when no fresh chunk came for ``watchdog_hold_s``
and stops when none came for ``watchdog_stop_s``. Any fault stops the robot; a ``finally``
stops it on every exit, exceptions and Ctrl-C included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebt_policy.deploy.energy import EnergyConfig
from ebt_policy.deploy.inference import Chunk, InferenceWorker, PlanFailure
from ebt_policy.deploy.robot import Observation, Robot
from ebt_policy.deploy.safety import SafetyConfig, SafetyLayer, check_positive
from ebt_policy.deploy.timing import Rate
from ebt_policy.errors import ConfigError

__all__ = ["DeployLoop", "EpisodeReport", "LoopConfig", "StepLog"]

log = logging.getLogger("ebt_policy.deploy")


@dataclass
class LoopConfig:
    """How the loop runs. Times in seconds; None picks the default named in the comment."""

    rate_hz: float | None = None  # default: the robot's control rate
    max_steps: int | None = None  # per episode; default: the robot's episode cap
    # action i of a chunk is due at t_obs + (i + offset) * dt; default: the robot's
    # spec.action_offset (1 for SimRobot, 0 for hardware), in this loop's periods
    action_offset: float | None = None
    warmup_plans: int = 1  # plans before the first episode, excluded from latency statistics
    first_plan_timeout_s: float = 60.0  # the first (warm-up) plan may compile / load
    watchdog_hold_s: float | None = None  # default: 1.5 chunk durations without a fresh chunk
    watchdog_stop_s: float | None = None  # default: 2.5 chunk durations
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)  # all responses off by default

    def __post_init__(self) -> None:
        check_positive(self, ("rate_hz", "watchdog_hold_s", "watchdog_stop_s"))
        if self.action_offset is not None and not self.action_offset >= 0:
            raise ConfigError(f"LoopConfig.action_offset: must be >= 0, got {self.action_offset}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"LoopConfig.max_steps: must be >= 1, got {self.max_steps}")


EARLY = -1  # _pick: the next action is due at a later tick (nothing is sent this tick)


@dataclass
class StepLog:
    """One control tick."""

    step: int
    tick: float  # monotonic time the tick really started (after the precise sleep)
    obs_timestamp: float
    obs_seq: int
    obs_status: str  # fresh, repeat, stale or out_of_order
    chunk: int  # id of the chunk the action came from; -1: held
    chunk_obs_time: float | None  # capture time of the frame that chunk was planned from
    latency_s: float | None  # planning latency of that chunk
    energy: float | None
    steps: int | None
    action: np.ndarray  # what was sent
    events: list[str]
    spread: float | None = None  # that chunk's best-of-K spread (None with one candidate)
    novelty: float | None = None  # that chunk's observation novelty (None without an index)


@dataclass
class EpisodeReport:
    """How one episode went."""

    episode: int
    seed: int | None
    steps: int
    success: bool | None  # None where the robot cannot judge it
    fault: str | None  # why the robot was stopped, or None
    events: Counter[str]
    latencies_s: list[float]  # per chunk, request to ready
    log: list[StepLog]
    fault_detail: str = ""  # what tripped it (e.g. "chunk novelty 1 > 0.99")

    def periods(self) -> np.ndarray:
        """Seconds between consecutive ticks."""
        return np.diff([s.tick for s in self.log])


class DeployLoop:
    """Runs ``policy`` on ``robot`` (already connected; use ``with robot:``).

    ``on_step(log, obs)`` is called after every tick with its observation (recording, status
    lines). :meth:`estop` may be
    called from any thread.
    """

    def __init__(
        self,
        policy: Any,
        robot: Robot,
        config: LoopConfig | None = None,
        on_step: Callable[[StepLog, Observation], None] | None = None,
    ) -> None:
        self.robot = robot
        self.config = cfg = config or LoopConfig()
        self.rate_hz = float(cfg.rate_hz or robot.spec.control_hz)
        self.dt = 1.0 / self.rate_hz
        self.safety = SafetyLayer(robot.spec, cfg.safety)  # refuses bad limits before anything
        chunk_s = int(policy.n_action_steps) * self.dt
        self.watchdog_hold_s = cfg.watchdog_hold_s or 1.5 * chunk_s
        self.watchdog_stop_s = cfg.watchdog_stop_s or 2.5 * chunk_s
        self.max_steps = cfg.max_steps or robot.spec.max_episode_steps
        offset = cfg.action_offset
        if offset is None:  # the robot's, in its periods, converted to this loop's
            offset = robot.spec.action_offset * self.rate_hz / robot.spec.control_hz
        self.action_offset = float(offset)
        self.policy = policy
        self.on_step = on_step
        self.steady_latencies: list[float] = []  # after warm-up: what the scheduling uses
        self._estop = threading.Event()
        self._estop_reason = ""
        self._worker: InferenceWorker | None = None
        self._warm = False
        self._cursor = (-1, 0)  # (chunk id, its next unused action)

    # ------------------------------------------------------------------ public
    def estop(self, reason: str = "operator") -> None:
        """Emergency stop: the robot is told to stop now, and the loop latches the fault."""
        self._estop_reason = reason
        self._estop.set()
        self.robot.stop()

    def reset(self) -> None:
        """The operator's explicit reset: clears an e-stop and any latched fault."""
        self._estop.clear()
        self.safety.reset()

    def run_episode(self, episode: int = 0, seed: int | None = None) -> EpisodeReport:
        """One episode: until the robot says done, ``max_steps`` ticks, or a fault."""
        report = EpisodeReport(episode, seed, 0, None, None, Counter(), [], [])
        try:
            self._run_episode(report)
        except BaseException:  # a fault in the loop, Ctrl-C: stop, and keep the first error
            try:
                self.robot.stop()
            except Exception:
                log.exception("robot.stop() failed while handling an error")
            raise
        self.robot.stop()  # the episode's end
        if self.safety.fault is not None:
            report.fault = self.safety.fault.reason
            report.fault_detail = self.safety.fault.detail
        return report

    def close(self) -> None:
        """Stop the inference thread."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # ------------------------------------------------------------------ internals
    def _lead_s(self) -> float:
        """How long before the chunk runs out to ask for the next: the steady-state p90
        latency plus one period."""
        lat = self.steady_latencies[-50:]
        return (float(np.quantile(lat, 0.9)) if lat else 0.0) + self.dt

    def _first_chunk(
        self, obs: Observation, seed: int | None
    ) -> tuple[Chunk | PlanFailure | None, Observation]:
        """Start the worker's episode and plan its first chunk synchronously (the clock starts
        after it); the first ``warmup_plans`` plans of the loop are thrown away, and the kept
        plan starts from a frame read after them (the robot moved on while they ran). Returns
        the plan and the frame it started from."""
        if self._worker is None:
            keys = [k for k in self.robot.spec.obs_keys if k in obs]
            self._worker = InferenceWorker(self.policy, self.dt, self.action_offset, keys)
        worker = self._worker
        n_warm = 0 if self._warm else self.config.warmup_plans
        result = None
        for i in range(n_warm + 1):
            if i > 0:
                obs = self.robot.observation()
            worker.start_episode(obs, seed)
            worker.request()
            result = worker.wait(self.config.first_plan_timeout_s)
            if not isinstance(result, Chunk):
                break
        self._warm = True
        return result, obs

    def _run_episode(self, report: EpisodeReport) -> None:
        robot, safety = self.robot, self.safety
        if self._estop.is_set():
            safety.trip("estop", self._estop_reason)
        if safety.fault is not None:
            return  # latched: nothing runs until the operator's reset()
        robot.start_episode(report.seed)
        safety.start_episode()
        obs = robot.observation()
        first, obs = self._first_chunk(obs, report.seed)
        if not isinstance(first, Chunk):
            safety.trip("first_plan", repr(first.error) if first else "timed out")
            return
        self._energy_ok(first, [], can_replan=False)
        if safety.fault is not None:
            return
        safety.check_observation(obs, time.monotonic())
        chunk: Chunk = first
        worker = self._worker
        assert worker is not None
        rate = Rate(self.rate_hz)
        for step in range(self.max_steps or 2**62):
            rate.sleep()
            tick = time.monotonic()  # when this tick really started, not its deadline
            events: list[str] = []
            obs = robot.observation()
            status = safety.check_observation(obs, tick)
            if status is None:
                worker.observe(obs)
            if obs.get("success"):
                report.success = True
            elif report.success is None and "success" in obs:
                report.success = False
            for result in worker.poll():
                if isinstance(result, Chunk):
                    safety.finite_output()
                    report.latencies_s.append(result.latency_s)
                    self.steady_latencies.append(result.latency_s)
                    if self._energy_ok(result, events):
                        chunk = result
                else:
                    events.append(f"plan_{result.kind}")
                    if result.kind == "nonfinite":
                        safety.nonfinite_output()
            if self._estop.is_set():
                safety.trip("estop", self._estop_reason)
            age = tick - chunk.t_ready
            if age > self.watchdog_stop_s:
                safety.trip("watchdog", f"no fresh chunk for {age:.2f} s")
            action, used = self._pick(chunk, tick, status, age, events)
            if used == EARLY:  # the robot keeps its current action for one more tick
                sent, safety_events = safety.last_action.copy(), []
            elif used:
                sent, safety_events = safety.filter(action)
            else:
                sent, safety_events = safety.hold(), []
            events += safety_events
            if safety.fault is not None:
                robot.stop()
                self._log(report, step, tick, obs, status, None, safety.stop_action, events)
                return
            if used != EARLY:
                robot.send(sent, at_time=float(chunk.due[used - 1]) if used else None)
            if not worker.in_flight and chunk.due[-1] - tick <= self._lead_s():
                worker.request()
            self._log(report, step, tick, obs, status, chunk if used > 0 else None, sent, events)
            if obs.get("done"):
                return

    def _energy_ok(self, chunk: Chunk, events: list[str], can_replan: bool = True) -> bool:
        """Apply the energy response to a new chunk; True when the loop should use it."""
        energy_cfg = self.config.energy
        value = energy_cfg.value(chunk)
        response = energy_cfg.response(value, chunk.replanned or not can_replan)
        if response == "stop":
            name = energy_cfg.statistic
            self.safety.trip("energy", f"chunk {name} {value:.4g} > {energy_cfg.stop_above}")
            return False
        if response == "replan":
            events.append("energy_replan")
            assert self._worker is not None
            self._worker.request(energy_cfg.replan_steps, replanned=True)
            return False
        if response == "scale":
            events.append("energy_scaled")
            chunk.scale = energy_cfg.scale_factor
        return True

    def _pick(
        self, chunk: Chunk, tick: float, status: str | None, age: float, events: list[str]
    ) -> tuple[np.ndarray, int]:
        """The chunk's action for this tick and 1 + its index, (hold, 0) when none is usable
        (``events`` says why), or (last action, EARLY) when the next is due at a later tick:
        nothing is sent, the robot keeps its current action. Actions whose tick has passed are
        dropped, never sent late, and none is sent before its tick."""
        if status in ("stale", "out_of_order"):
            events += [status, "hold_obs"]
            return self.safety.hold(), 0
        if age > self.watchdog_hold_s:
            events.append("hold_watchdog")
            return self.safety.hold(), 0
        start = self._cursor[1] if self._cursor[0] == chunk.id else 0
        late = chunk.due[start:] < tick - self.dt / 2  # (remaining,)
        if late.all():
            events.append("over_budget")
            return self.safety.hold(), 0
        i = start + int(np.argmin(late))
        if chunk.due[i] >= tick + self.dt / 2:  # due at a later tick: this tick came early
            events.append("early")  # (after a late tick, or with action_offset > 0.5)
            return self.safety.last_action, EARLY
        if i > start:
            events.append(f"dropped_late:{i - start}")
        self._cursor = (chunk.id, i + 1)
        action = chunk.actions[i]
        if chunk.scale != 1.0:  # a careful chunk: keep only part of each step
            if self.robot.spec.action_kind == "delta":
                action = action * chunk.scale
            else:
                last = self.safety.last_action
                action = last + chunk.scale * (action - last)
        return action, i + 1

    def _log(
        self,
        report: EpisodeReport,
        step: int,
        tick: float,
        obs: Observation,
        status: str | None,
        chunk: Chunk | None,
        action: np.ndarray,
        events: list[str],
    ) -> None:
        for e in events:
            name, _, count = e.partition(":")
            report.events[name] += int(count or 1)
        report.steps = step + 1
        entry = StepLog(
            step=step,
            tick=tick,
            obs_timestamp=float(obs["timestamp"]),
            obs_seq=int(obs["seq"]),
            obs_status=status or "fresh",
            chunk=chunk.id if chunk is not None else -1,
            chunk_obs_time=chunk.t_obs if chunk is not None else None,
            latency_s=chunk.latency_s if chunk is not None else None,
            energy=chunk.energy if chunk is not None else None,
            steps=chunk.steps if chunk is not None else None,
            action=np.asarray(action, np.float64).copy(),
            events=events,
            spread=chunk.spread if chunk is not None else None,
            novelty=chunk.novelty if chunk is not None else None,
        )
        report.log.append(entry)
        if self.on_step is not None:
            self.on_step(entry, obs)
