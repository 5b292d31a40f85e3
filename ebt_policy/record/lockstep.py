"""A registered task as a robot that steps once per action it is sent (recording in simulation).

The deploy runtime's :class:`~ebt_policy.deploy.robots.sim.SimRobot` steps physics on its own
clock, so that a slow policy shows up as held actions. A recording wants the opposite: every
stored observation paired with exactly the action the env then stepped with, as
`ebt-policy collect` stores them, so that a demonstration recorded through teleoperation trains
like a scripted one. :class:`LockstepSim` steps the env in :meth:`send`; the recorder paces the
ticks at the control rate when a person is operating.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ebt_policy.deploy.robot import Observation, Robot, RobotSpec

__all__ = ["LockstepSim"]


class LockstepSim(Robot):
    """Task ``task`` stepped once per :meth:`send` (see the module docstring)."""

    def __init__(self, task: str, images: bool = False, render_size: int = 84) -> None:
        from ebt_policy.envs import get_task

        self.task_spec = spec = get_task(task)
        self.task, self.images, self.render_size = task, bool(images), int(render_size)
        cameras = spec.rgb_keys if images else ()
        self.spec = RobotSpec(
            name=f"sim:{task}",
            action_dim=spec.action_dim,
            action_low=tuple(spec.action_low),
            action_high=tuple(spec.action_high),
            control_hz=spec.control_hz,
            obs_keys=spec.obs_keys + tuple(cameras),
            action_kind=spec.action_kind,
            max_episode_steps=spec.max_episode_steps,
        )
        self._env: Any = None
        self._obs: dict[str, np.ndarray] = {}
        self._seq = 0
        self._success = self._done = False
        self._stopped = True

    def connect(self) -> None:
        if self._env is None:
            from ebt_policy.envs import make_env

            self._env = make_env(self.task, images=self.images, render_size=self.render_size)

    def start_episode(self, seed: int | None = None) -> None:
        self._obs, _ = self._env.reset(seed=seed)
        self._success = self._done = self._stopped = False
        self._seq += 1

    def observation(self) -> Observation:
        return {
            **self._obs,
            "timestamp": time.monotonic(),
            "seq": self._seq,
            "success": self._success,
            "done": self._done,
        }

    def send(self, action: np.ndarray, at_time: float | None = None) -> None:
        if self._stopped or self._done:
            return
        action = np.asarray(action, np.float32).reshape(self.spec.action_dim)
        self._obs, _, terminated, truncated, info = self._env.step(action)
        self._success = self._success or bool(info.get("success", False))
        self._done = bool(terminated or truncated)
        self._seq += 1

    def stop(self) -> None:
        self._stopped = True

    def disconnect(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def dataset_metadata(self) -> dict[str, Any]:
        """The task's store metadata, as `ebt-policy collect` writes it."""
        return self.task_spec.dataset_metadata(images=self.images, render_size=self.render_size)
