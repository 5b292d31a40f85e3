"""The safety layer between the policy and the robot: every action and observation passes here.

Order of the action checks (each an event the loop counts and records):

1. a latched fault -> the stop action, nothing else is sent until :meth:`SafetyLayer.reset`;
2. NaN/Inf guard, *before* any clip (``np.clip`` passes NaN through): hold the last safe
   action, count, and latch a fault after ``max_nonfinite`` non-finite outputs in a row;
3. absolute clip to the action limits;
4. per-step change cap: no component moves more than ``max_step_change`` from the last action
   sent (LeRobot's ``max_relative_target``), a velocity limit for position targets;
5. optional acceleration limit: the per-step change differs from the previous one by at most
   ``max_step_accel``.

Observations are checked for age (``max_obs_age_s`` since capture) and order (a sequence
number or timestamp that goes backwards, or a new number with a timestamp that does not
advance, is rejected); after ``max_stale`` stale ticks in a row a fault latches. Faults (also
the watchdog's and the e-stop's, through :meth:`SafetyLayer.trip`) stay latched until an
explicit :meth:`SafetyLayer.reset`. Limits are validated when the layer is built: a NaN,
infinite, reversed or wrongly shaped limit refuses to start rather than silently disabling a
clamp.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ebt_policy.deploy.robot import Observation, RobotSpec
from ebt_policy.errors import ConfigError

__all__ = ["Fault", "SafetyConfig", "SafetyLayer", "check_positive", "validate_limits"]


def check_positive(owner: object, names: tuple[str, ...]) -> None:
    """ConfigError naming ``Class.field`` for a field of ``owner`` that is set (not None) but not
    finite and > 0."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ConfigError(f"{type(owner).__name__}.{name}: must be finite and > 0, got {value}")


@dataclass
class SafetyConfig:
    """Safety thresholds (action units and seconds). None disables a check."""

    max_step_change: float | None = 0.5  # per control step, per action component (a velocity)
    # most change of the per-step change from one step to the next (an acceleration limit)
    max_step_accel: float | None = None
    max_nonfinite: int = 3  # non-finite policy outputs in a row before the fault latches
    max_obs_age_s: float | None = 0.2  # an observation older than this is stale
    max_stale: int = 5  # stale ticks in a row before the fault latches

    def __post_init__(self) -> None:
        check_positive(self, ("max_step_change", "max_step_accel", "max_obs_age_s"))
        for name in ("max_nonfinite", "max_stale"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SafetyConfig.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Fault:
    """Why the layer latched: ``reason`` is one word (nonfinite, stale, watchdog, estop, ...)."""

    reason: str
    detail: str


def validate_limits(low: object, high: object, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` as float64 (action_dim,) arrays; ConfigError unless both are finite, of
    that shape, and ``high - low`` is positive everywhere."""
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    for name, a in (("low", lo), ("high", hi)):
        if a.shape != (action_dim,):
            raise ConfigError(
                f"action limits: {name} has shape {a.shape}, expected ({action_dim},)"
            )
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"action limits: {name} must be finite, got {a.tolist()}")
    if not np.all(hi > lo):
        raise ConfigError(
            f"action limits: need high > low everywhere, got {lo.tolist()}, {hi.tolist()}"
        )
    return lo, hi


def _braking_step(room: np.ndarray, a: float) -> np.ndarray:
    """Per component, the largest step s whose braking run s, s - a, s - 2a, ... (its positive
    terms) covers at most ``room``: then slowing down by ``a`` per step always stops in time,
    so the acceleration limit and the position limits never contradict each other."""
    # with K = floor(s / a) the run covers (K + 1) s - a K (K + 1) / 2, increasing in s
    guess = np.floor((np.sqrt(a * a / 4 + 2 * a * room) - a / 2) / a)
    best = np.zeros_like(room)
    for dk in (-1.0, 0.0, 1.0):
        k = np.maximum(guess + dk, 0.0)
        s = np.minimum((room + a * k * (k + 1) / 2) / (k + 1), (k + 1) * a)
        best = np.where(s >= k * a, np.maximum(best, s), best)
    return best


class SafetyLayer:
    """Filters actions and checks observations for one robot (see the module docstring).

    Not thread-safe: the control thread owns it.
    """

    def __init__(self, spec: RobotSpec, config: SafetyConfig | None = None) -> None:
        self.spec = spec
        self.config = config or SafetyConfig()
        self.low, self.high = validate_limits(spec.action_low, spec.action_high, spec.action_dim)
        if not (np.isfinite(spec.control_hz) and spec.control_hz > 0):
            raise ConfigError(
                f"{spec.name}: control rate must be finite and > 0, got {spec.control_hz}"
            )
        self.events: Counter[str] = Counter()  # event name -> how many times, since built
        self.fault: Fault | None = None
        self.reset()

    # ------------------------------------------------------------------ faults
    def trip(self, reason: str, detail: str = "") -> None:
        """Latch a fault (the first one is kept); only :meth:`reset` clears it."""
        self.events[f"fault_{reason}"] += 1
        if self.fault is None:
            self.fault = Fault(reason, detail)

    def reset(self, last_action: np.ndarray | None = None) -> None:
        """Clear the fault and the in-a-row counters (an operator's explicit reset, or a new
        episode); ``last_action`` is where the change cap starts from (default: the stop action)."""
        self.fault = None
        self.start_episode(last_action)

    def start_episode(self, last_action: np.ndarray | None = None) -> None:
        """Restart the in-a-row counters and the observation order for a new episode; a latched
        fault stays latched."""
        self._nonfinite_in_row = 0  # whole outputs (chunks), see nonfinite_output
        self._bad_actions_in_row = 0  # single actions given to filter
        self._stale_in_row = 0
        self._last_seq: int | None = None
        self._last_ts: float | None = None
        self.last_action = self.spec.stop_action(last_action)
        self._last_step = np.zeros(self.spec.action_dim)  # last change sent (for max_step_accel)

    @property
    def stop_action(self) -> np.ndarray:
        """What a stopped robot is sent."""
        return self.spec.stop_action(self.last_action)

    # ------------------------------------------------------------------ actions
    def nonfinite_output(self, detail: str = "") -> None:
        """Count one non-finite policy output (a chunk); latches the fault at ``max_nonfinite``
        in a row. Single actions given to :meth:`filter` are counted there, the same way."""
        self.events["nonfinite"] += 1
        self._nonfinite_in_row += 1
        if self._nonfinite_in_row >= self.config.max_nonfinite:
            self.trip("nonfinite", f"{self._nonfinite_in_row} non-finite chunks in a row {detail}")

    def finite_output(self) -> None:
        """A finite policy output arrived: the in-a-row count starts again."""
        self._nonfinite_in_row = 0

    def filter(self, action: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The action to send for the policy's ``action``, and the events it raised."""
        if self.fault is not None:
            return self.hold(), ["faulted"]
        a = np.asarray(action, np.float64)
        if a.shape != (self.spec.action_dim,):
            self.trip("shape", f"action of shape {a.shape}, expected ({self.spec.action_dim},)")
            return self.stop_action, ["shape"]
        if not np.all(np.isfinite(a)):  # before the clip: np.clip keeps NaN
            self.events["nonfinite"] += 1
            self._bad_actions_in_row += 1
            if self._bad_actions_in_row >= self.config.max_nonfinite:
                self.trip("nonfinite", f"{self._bad_actions_in_row} non-finite actions in a row")
            return self.hold(), ["nonfinite"]
        self._bad_actions_in_row = 0
        events = []
        clipped = np.clip(a, self.low, self.high)
        if not np.array_equal(clipped, a):
            events.append("clipped")
        cap, accel = self.config.max_step_change, self.config.max_step_accel
        if cap is not None:
            capped = np.clip(clipped, self.last_action - cap, self.last_action + cap)
            if not np.array_equal(capped, clipped):
                events.append("step_capped")
            clipped = capped
        if accel is not None:
            clipped = self._ramp(clipped, accel, events)
        for e in events:
            self.events[e] += 1
        self._last_step = clipped - self.last_action
        self.last_action = clipped
        return clipped.copy(), events

    def _ramp(self, target: np.ndarray, accel: float, events: list[str]) -> np.ndarray:
        """Move toward ``target`` with the step changing by at most ``accel`` per control step,
        slowing down near the limits so that braking at ``accel`` stops inside them."""
        want = target - self.last_action
        step = np.clip(want, self._last_step - accel, self._last_step + accel)
        v_hi = _braking_step(np.maximum(self.high - self.last_action, 0.0), accel)
        v_lo = _braking_step(np.maximum(self.last_action - self.low, 0.0), accel)
        step = np.clip(step, -v_lo, v_hi)
        if not np.allclose(step, want, rtol=0, atol=1e-12):
            events.append("accel_capped")
        return np.clip(self.last_action + step, self.low, self.high)

    def hold(self) -> np.ndarray:
        """What a loop without a usable fresh action sends (also after a fault): the robot's stop
        action for a delta robot (repeating the last delta would keep it moving while the loop is
        blind); for an absolute one the last safe target, or, with ``max_step_accel``, a target
        that brakes the current motion at that limit (freezing it in one tick would be an
        unbounded deceleration), within the action limits."""
        if self.spec.action_kind == "delta":
            self._last_step = np.zeros(self.spec.action_dim)
            self.last_action = self.stop_action.copy()  # the change cap applies from what was sent
            return self.last_action.copy()
        accel = self.config.max_step_accel
        if accel is None:
            self._last_step = np.zeros(self.spec.action_dim)  # the target stands still
            return self.last_action.copy()
        # each component's step shrinks toward zero by at most accel: v, v - a, ..., 0
        step = np.sign(self._last_step) * np.maximum(np.abs(self._last_step) - accel, 0.0)
        self.last_action = np.clip(self.last_action + step, self.low, self.high)
        self._last_step = step
        return self.last_action.copy()

    # ------------------------------------------------------------------ observations
    def check_observation(self, obs: Observation, now: float) -> str | None:
        """None for a new, fresh frame; else why it is not usable this tick: ``repeat`` (no new
        frame yet, not an error unless it also grows old), ``stale`` (older than
        ``max_obs_age_s``) or ``out_of_order`` (sequence or timestamp went backwards)."""
        seq, ts = int(obs["seq"]), float(obs["timestamp"])
        problem = None
        if self._last_seq is not None and (
            seq < self._last_seq or (seq > self._last_seq and ts <= self._last_ts)  # type: ignore[operator]
        ):
            problem = "out_of_order"
        elif self.config.max_obs_age_s is not None and now - ts > self.config.max_obs_age_s:
            problem = "stale"
        elif seq == self._last_seq:
            return "repeat"
        if problem is None:
            self._last_seq, self._last_ts = seq, ts
            self._stale_in_row = 0
            return None
        self.events[problem] += 1
        self._stale_in_row += 1
        if self._stale_in_row >= self.config.max_stale:
            self.trip("stale", f"{self._stale_in_row} unusable observations in a row ({problem})")
        return problem
