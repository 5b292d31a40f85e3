"""`pusht` (gym-pusht) behind our observation-dict API.

The agent (a circle) pushes a T-shaped block onto a fixed target pose. Action: (2,) absolute target
position of the agent in the 512x512 workspace (pixels), 10 Hz. The score is target-area coverage;
success when coverage >= 0.95 (gym-pusht's own threshold).

Observations (float32): ``agent_pos`` (2), ``block_keypoints`` (16: the T's 8 corners, x/y in
pixels; continuous in the block's angle, unlike the angle itself) and ``block_pose`` (x, y, angle
in [0, 2 pi)); with ``images=True`` also ``overhead_image`` (render_size, render_size, 3) uint8.
``info["coverage"]`` is this step's coverage, ``info["max_coverage"]`` the episode's best so far.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ebt_policy.envs.tasks.pusht.spec import PUSHT

__all__ = ["GOAL_POSE", "PushTEnv", "SUCCESS_COVERAGE", "make_pusht_env"]

GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # fixed in gym-pusht
SUCCESS_COVERAGE = 0.95
MAX_EPISODE_STEPS = PUSHT.max_episode_steps


def _import_pusht() -> Any:
    # pygame greets on stdout at import unless told not to.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from gym_pusht.envs.pusht import PushTEnv as _GymPushT

    return _GymPushT


class PushTEnv(gym.Env):
    """gym-pusht's PushT with dict observations (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": PUSHT.control_hz}

    def __init__(
        self,
        images: bool = False,
        render_size: int = 84,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.images = bool(images)
        self.render_size = int(render_size)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self._env = _import_pusht()(
            obs_type="state",  # we assemble observations (and images) ourselves
            render_mode="rgb_array",
            observation_width=self.render_size,
            observation_height=self.render_size,
        )
        obs_spaces: dict[str, spaces.Space] = {
            "agent_pos": spaces.Box(0.0, 512.0, (2,), np.float32),
            "block_keypoints": spaces.Box(-np.inf, np.inf, (16,), np.float32),
            "block_pose": spaces.Box(-np.inf, np.inf, (3,), np.float32),
        }
        if self.images:
            shape = (self.render_size, self.render_size, 3)
            obs_spaces["overhead_image"] = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = PUSHT.action_bounds()
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        self._max_coverage = 0.0

    @property
    def mujoco_data(self) -> None:
        """PushT is pymunk, not MuJoCo: there are no MuJoCo warning counters."""
        return None

    def _obs(self) -> dict[str, np.ndarray]:
        env = self._env
        obs = {
            "agent_pos": np.array(env.agent.position, dtype=np.float32),
            "block_keypoints": env.get_keypoints(env._block_shapes).astype(np.float32).reshape(16),
            "block_pose": np.array(
                [*env.block.position, env.block.angle % (2 * np.pi)], dtype=np.float32
            ),
        }
        if self.images:
            obs["overhead_image"] = np.ascontiguousarray(env._render(visualize=False))
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._env.reset(seed=seed, options=options)
        coverage = float(self._env._get_coverage())
        self._max_coverage = coverage
        info = {"success": False, "coverage": coverage, "max_coverage": coverage}
        return self._obs(), info

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"pusht: action must be finite, got {action}")
        _, _, _, _, raw_info = self._env.step(np.clip(action, 0.0, 512.0))
        coverage = float(raw_info["coverage"])
        self._max_coverage = max(self._max_coverage, coverage)
        success = coverage >= SUCCESS_COVERAGE
        info = {"success": success, "coverage": coverage, "max_coverage": self._max_coverage}
        terminated = success and self.terminate_on_success
        return self._obs(), coverage, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return np.ascontiguousarray(self._env._render(visualize=False))

    def close(self) -> None:
        self._env.close()


def make_pusht_env(
    images: bool = False,
    render_size: int = 84,
    terminate_on_success: bool = True,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    render_mode: str | None = None,
) -> gym.Env:
    """The `pusht` env wrapped in a TimeLimit at ``max_episode_steps`` steps."""
    env = PushTEnv(images, render_size, terminate_on_success, render_mode)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
