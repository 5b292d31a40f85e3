"""A registered task run as a robot: physics steps in wall-clock time on the robot's own thread.

The policy side never steps the simulator. Every control period the robot thread applies the
newest action that is due (or holds the last one when none arrived in time, as hardware does),
steps the env once and publishes the new frame with its capture time and sequence number. So a
slow policy shows up as held actions and a frozen or late stream as stale frames, exactly the
failures the deploy loop must survive on hardware. ``obs_latency_s`` delays when a frame becomes
visible; ``drop_prob`` loses frames (the previous one stays the newest).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ebt_policy.deploy.robot import Observation, Robot, RobotSpec
from ebt_policy.deploy.timing import Rate
from ebt_policy.errors import ConfigError

__all__ = ["SimRobot"]


class SimRobot(Robot):
    """Task ``task`` (see ``ebt_policy.envs.list_tasks()``) stepping in real time.

    Args:
        task: a registered task name.
        control_hz: the robot's rate (default: the task's; a faster rate runs the same
            physics per step, faster than real time, which tests use).
        obs_latency_s: a frame becomes visible this long after it was captured.
        drop_prob: probability that a frame is never published.
        seed: seeds the drop draws.
        env_kwargs: passed to the task's env factory.
    """

    def __init__(
        self,
        task: str,
        control_hz: float | None = None,
        obs_latency_s: float = 0.0,
        drop_prob: float = 0.0,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ebt_policy.envs import get_task

        task_spec = self.task_spec = get_task(task)
        self.env_kwargs = dict(env_kwargs or {})
        cameras = task_spec.rgb_keys if self.env_kwargs.get("images") else ()
        hz = float(control_hz if control_hz is not None else task_spec.control_hz)
        if not hz > 0 or obs_latency_s < 0 or not 0 <= drop_prob < 1:
            raise ConfigError(
                f"SimRobot({task!r}): need control_hz > 0, obs_latency_s >= 0, "
                f"0 <= drop_prob < 1; got {hz}, {obs_latency_s}, {drop_prob}"
            )
        self.task = task
        self.spec = RobotSpec(
            name=f"sim:{task}",
            action_dim=task_spec.action_dim,
            action_low=tuple(task_spec.action_low),
            action_high=tuple(task_spec.action_high),
            control_hz=hz,
            obs_keys=task_spec.obs_keys + tuple(cameras),
            action_kind=task_spec.action_kind,
            max_episode_steps=task_spec.max_episode_steps,
            action_offset=1.0,  # a frame is the state the next tick's action acts on
        )
        self.obs_latency_s = float(obs_latency_s)
        self.drop_prob = float(drop_prob)
        self.clock = clock
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._env: Any = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._pending: list[tuple[float, np.ndarray]] = []  # (due time, action), in send order
        self._applied: np.ndarray = self.spec.stop_action(None)
        self._frames: deque[Observation] = deque(maxlen=256)  # published, oldest first
        self._seq = 0
        self._stopped = True
        self._done = False
        self.held_ticks = 0  # ticks with no new action due (the last one was held)
        self.ignored_sends = 0  # actions sent while stopped
        self.steps = 0  # env steps of the current episode

    # ------------------------------------------------------------------ Robot
    def connect(self) -> None:
        if self._thread is not None:
            return
        self._env = self._make_env()
        self._reset(None)
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="sim-robot", daemon=True)
        self._thread.start()

    def _make_env(self) -> Any:
        from ebt_policy.envs import make_env

        return make_env(self.task, **self.env_kwargs)

    def dataset_metadata(self) -> dict[str, Any]:
        """The task's store metadata (so the env can be rebuilt), at the rate this robot ran."""
        meta = self.task_spec.dataset_metadata(**self.env_kwargs)
        return {**meta, "robot": self.spec.name, "control_hz": self.spec.control_hz}

    def start_episode(self, seed: int | None = None) -> None:
        with self._lock:
            self._reset(seed)

    def observation(self) -> Observation:
        visible_before = self.clock() - self.obs_latency_s
        with self._lock:
            for frame in reversed(self._frames):
                if frame["timestamp"] <= visible_before:
                    return dict(frame)
            if not self._frames:
                raise RuntimeError(f"{self.spec.name}: observation() before connect()")
            return dict(self._frames[0])  # nothing old enough yet: the oldest kept

    def send(self, action: np.ndarray, at_time: float | None = None) -> None:
        action = np.asarray(action, np.float64).reshape(self.spec.action_dim)
        with self._lock:
            if self._stopped:
                self.ignored_sends += 1
                return
            self._pending.append((self.clock() if at_time is None else float(at_time), action))

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._pending.clear()
            self._applied = self.spec.stop_action(self._applied)

    def disconnect(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._env is not None:
            self._env.close()
            self._env = None

    # ------------------------------------------------------------------ robot thread
    def _reset(self, seed: int | None) -> None:
        """New episode (caller holds the lock, or the thread is not running yet)."""
        obs, _ = self._env.reset(seed=seed)
        self._pending.clear()
        self._applied = self.spec.stop_action(None)
        self._stopped = False
        self._done = False
        self.steps = 0
        self._publish(obs, success=False)

    def _publish(self, obs: dict[str, np.ndarray], success: bool, dropped: bool = False) -> None:
        self._seq += 1  # a dropped frame still uses its number, as a lost camera frame does
        if dropped:
            return
        frame = {k: np.array(v) for k, v in obs.items()}
        frame.update(timestamp=self.clock(), seq=self._seq, success=success, done=self._done)
        self._frames.append(frame)

    def _due_action(self, now: float) -> np.ndarray:
        """The newest pending action due by ``now`` (older due ones are superseded)."""
        due = [i for i, (t, _) in enumerate(self._pending) if t <= now]
        if due:
            self._applied = self._pending[due[-1]][1]
            del self._pending[: due[-1] + 1]
        else:
            self.held_ticks += 1
        return self._applied

    def _run(self) -> None:
        rate = Rate(self.spec.control_hz, self.clock)
        half = rate.period / 2  # an action due within half a period counts for this tick
        while self._running.is_set():
            tick = rate.sleep()
            with self._lock:
                if self._done:
                    continue
                action = self._due_action(tick + half)
                obs, _, terminated, truncated, info = self._env.step(action.astype(np.float32))
                self.steps += 1
                self._done = bool(terminated or truncated)
                dropped = not self._done and self._rng.random() < self.drop_prob
                self._publish(obs, bool(info.get("success", False)), dropped)
