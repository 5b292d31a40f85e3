"""A fake UR controller behind ``ur_rtde``'s interfaces, for tests and ``--robot ur-fake://``.

:class:`FakeURController` is the arm: a TCP pose integrated at 500 Hz (``DT``) that follows
``servoL`` set-points as a first-order lag with the set-point's lookahead time as its time
constant (the gain is accepted, not modelled), decelerates at the requested rate on
``servoStop`` / ``stopL`` / ``speedStop``, and protective-stops, as the UR's safety system does,
when the TCP leaves its safety box, when following a set-point would exceed its TCP speed limit,
or when it presses into the table (``table_z``) harder than ``force_limit``. A protective stop
halts the arm at once and ends the program until :meth:`FakeURController.unlock_protective_stop`
(the teach pendant's job on hardware). The RTDE watchdog (``setWatchdog``) ends the program and
stops the arm when ``kickWatchdog`` is not called for ``1 / min_frequency`` seconds. Commands
reach the arm ``latency_s`` after they are sent, servo set-points are lost with ``drop_prob``,
and the state read back is ``latency_s`` old.

The fake has no kinematics: the joint positions it reports stay at ``start_q``.

The ``ur_rtde`` look-alikes that drive it are in :mod:`ebt_policy.deploy.robots.ur.fake_rtde`.

The clock is injectable: :meth:`FakeURController.advance_to` steps the arm deterministically
(tests); :meth:`FakeURController.start` steps it on a background thread in real time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["DT", "FakeURController", "FakeURSettings"]

DT = 0.002  # the UR's 500 Hz control cycle
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP = 1, 3  # UR safety modes (getSafetyMode)


@dataclass
class FakeURSettings:
    """The fake arm's start pose, safety configuration and link faults (base frame, SI units)."""

    start_pose: tuple[float, ...] = (0.0, -0.4, 0.3, math.pi, 0.0, 0.0)  # tool pointing down
    start_q: tuple[float, ...] = (0.0, -1.571, 1.571, -1.571, -1.571, 0.0)
    safety_box_min: tuple[float, float, float] = (-0.8, -0.9, -0.05)
    safety_box_max: tuple[float, float, float] = (0.8, 0.5, 0.9)
    speed_limit: float = 1.0  # m/s: the safety system's TCP speed limit
    table_z: float | None = 0.0  # a surface under the arm (None: none)
    stiffness: float = 5000.0  # N/m of the table
    force_limit: float = 150.0  # N
    latency_s: float = 0.0  # each way
    drop_prob: float = 0.0  # servo set-points lost
    seed: int = 0


class FakeURController:
    """The simulated arm; every public method is thread-safe (see the module docstring)."""

    def __init__(
        self,
        settings: FakeURSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = s = settings or FakeURSettings()
        self.clock = clock
        self._lock = threading.RLock()
        self._rng = np.random.default_rng(s.seed)
        self.t = clock()
        self.pos = np.asarray(s.start_pose[:3], np.float64)
        self.rot = Rotation.from_rotvec(s.start_pose[3:])
        self.vel = np.zeros(3)
        self.angvel = np.zeros(3)
        self.mode = "idle"  # idle, servo, stopping
        self.decel = 10.0
        self.target: tuple[np.ndarray, Rotation, float] | None = None  # pos, rot, lookahead
        self.program_running = False
        self.protective_stop: str | None = None  # why, while stopped
        self.watchdog_s: float | None = None
        self.last_kick = self.t
        self.events: list[tuple[float, str]] = []  # (time, what): stops, faults, uploads
        self.servo_count = 0
        self.dropped = 0
        self._inbox: deque[tuple[float, str, tuple]] = deque()  # (apply at, command, args)
        self._history: deque[tuple[float, dict[str, Any]]] = deque(maxlen=4096)
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._record_state()

    # ------------------------------------------------------------------ stepping
    def advance_to(self, t: float) -> None:
        """Step the arm in 2 ms cycles up to time ``t``."""
        with self._lock:
            while self.t + DT <= t + 1e-12:
                self._step()

    def start(self) -> None:
        """Step the arm in real time on a background thread (until :meth:`shutdown`)."""
        if self._thread is not None:
            return
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="fake-ur", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the background thread."""
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _run(self) -> None:
        while self._running.is_set():
            self.advance_to(self.clock())
            time.sleep(DT / 2)

    def _event(self, what: str) -> None:
        self.events.append((self.t, what))

    def _step(self) -> None:
        s = self.settings
        self.t += DT
        while self._inbox and self._inbox[0][0] <= self.t:
            _, name, args = self._inbox.popleft()
            self._apply(name, args)
        kicked_late = self.watchdog_s is not None and self.t - self.last_kick > self.watchdog_s
        if kicked_late and self.program_running:
            self._event("watchdog")
            self.program_running = False
            self._begin_stop(10.0)
        if self.mode == "servo" and self.target is not None:
            goal_pos, goal_rot, lookahead = self.target
            tau = max(lookahead, DT)
            vel = (goal_pos - self.pos) / tau
            angvel = (goal_rot * self.rot.inv()).as_rotvec() / tau
            speed = float(np.linalg.norm(vel))
            if speed > s.speed_limit:
                self._protective_stop(f"speed {speed:.2f} m/s over the limit {s.speed_limit}")
            else:
                self.vel, self.angvel = vel, angvel
        elif self.mode == "stopping":
            self.vel = _decelerate(self.vel, self.decel * DT)
            self.angvel = _decelerate(self.angvel, 4 * self.decel * DT)
            if not self.vel.any() and not self.angvel.any():
                self.mode = "idle"
        else:
            self.vel, self.angvel = np.zeros(3), np.zeros(3)
        self.pos = self.pos + self.vel * DT
        self.rot = Rotation.from_rotvec(self.angvel * DT) * self.rot
        if np.any(self.pos < s.safety_box_min) or np.any(self.pos > s.safety_box_max):
            self._protective_stop(f"TCP {np.round(self.pos, 3).tolist()} left the safety box")
        elif self.force() > s.force_limit:
            self._protective_stop(f"force {self.force():.0f} N over the limit {s.force_limit}")
        self._record_state()

    def force(self) -> float:
        """The table's push on the TCP, N."""
        z0 = self.settings.table_z
        return 0.0 if z0 is None else max(0.0, z0 - self.pos[2]) * self.settings.stiffness

    def _protective_stop(self, why: str) -> None:
        self._event(f"protective_stop: {why}")
        self.protective_stop = why
        self.program_running = False
        self.mode, self.target = "idle", None
        self.vel, self.angvel = np.zeros(3), np.zeros(3)

    def _begin_stop(self, decel: float) -> None:
        self.mode, self.target, self.decel = "stopping", None, max(float(decel), 1e-3)

    def _apply(self, name: str, args: tuple) -> None:
        if name == "servoL":
            if not self.program_running:
                return
            pose, lookahead = args
            self.mode = "servo"
            self.target = (
                np.asarray(pose[:3], np.float64),
                Rotation.from_rotvec(pose[3:]),
                float(lookahead),
            )
            self.servo_count += 1
        elif name in ("servoStop", "stopL", "speedStop"):
            self._event(name)
            if self.mode != "idle":
                self._begin_stop(args[0])

    def _record_state(self) -> None:
        state = {
            "pose": [*self.pos.tolist(), *self.rot.as_rotvec().tolist()],
            "speed": [*self.vel.tolist(), *self.angvel.tolist()],
            "force": [0.0, 0.0, self.force(), 0.0, 0.0, 0.0],
            "protective_stop": self.protective_stop is not None,
            "program_running": self.program_running,
            "t": self.t,
        }
        self._history.append((self.t, state))

    # ------------------------------------------------------------------ what the interfaces call
    def submit(self, name: str, *args: Any) -> bool:
        """Queue a command (servoL, servoStop, stopL, speedStop); False when it is refused."""
        with self._lock:
            if name == "servoL":
                if not self.program_running:
                    return False
                if self._rng.random() < self.settings.drop_prob:
                    self.dropped += 1
                    return True  # sent, never arrives
            self._inbox.append((self.clock() + self.settings.latency_s, name, args))
            return True

    def state(self) -> dict[str, Any]:
        """The newest state that is at least ``latency_s`` old."""
        with self._lock:
            visible = self.clock() - self.settings.latency_s
            for t, state in reversed(self._history):
                if t <= visible + 1e-9:
                    return dict(state)
            return dict(self._history[0][1])

    def upload_script(self) -> bool:
        """What constructing a control interface (or ``reuploadScript``) does: start the
        program, unless a protective stop holds the arm."""
        with self._lock:
            if self.protective_stop is not None:
                return False
            self.program_running, self.watchdog_s = True, None
            self.last_kick = self.clock()
            self._event("upload")
            self._record_state()
            return True

    def stop_script(self) -> None:
        with self._lock:
            self._event("stopScript")
            self.program_running = False
            self._begin_stop(self.decel)
            self._record_state()

    def set_watchdog(self, min_frequency: float) -> bool:
        with self._lock:
            self.watchdog_s, self.last_kick = 1.0 / float(min_frequency), self.clock()
            return True

    def kick_watchdog(self) -> bool:
        with self._lock:
            self.last_kick = self.clock()
            return True

    def trigger_protective_stop(self) -> bool:
        with self._lock:
            self._protective_stop("triggered")
            self._record_state()
            return True

    def unlock_protective_stop(self) -> None:
        """Clear a protective stop (the operator's action on the teach pendant)."""
        with self._lock:
            self._event("unlock")
            self.protective_stop = None
            self._record_state()

    def joints(self) -> list[float]:
        """Joint positions, rad (constant: the fake has no kinematics)."""
        return [float(v) for v in self.settings.start_q]

    def status(self) -> dict[str, Any]:
        """Tests: the arm's state now (no latency), its mode and its event log."""
        with self._lock:
            return {
                **self._history[-1][1],
                "mode": self.mode,
                "events": list(self.events),
                "servo_count": self.servo_count,
                "dropped": self.dropped,
            }


def _decelerate(v: np.ndarray, dv: float) -> np.ndarray:
    """``v`` shortened by ``dv`` (zero once shorter than that)."""
    norm = float(np.linalg.norm(v))
    return np.zeros(3) if norm <= dv else v * (1.0 - dv / norm)
