"""`twogoal`: a small, deliberately multimodal task in plain MuJoCo.

A point mass (2-D, seen from above) starts below a wall-like obstacle and must reach one of two
goals placed symmetrically on either side above it. Either goal counts. The scripted expert goes
up toward the obstacle, holds still for a few steps, then picks a side at random and goes around
its side of the obstacle. The demonstrations thus hold two equally likely modes from the same
states (and the same recent history): the mean of the two is "stay put / straight up", so a policy
that regresses the mean action (MSE) stalls below the obstacle, while a policy that can represent
both modes (energy, diffusion) commits to one side. Measured: an MSE-trained MLP on 200 expert
demos reaches 0/50 (tests/test_envs_twogoal.py, slow), the expert 100%.

Physics: two slide joints driven by velocity actuators (no gravity), 10 ms timestep, 5 substeps per
control step (20 Hz). One step costs tens of microseconds, so the task suits CI.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from ebt_policy.envs.tasks.twogoal.spec import TWOGOAL

__all__ = ["GOALS", "OBSTACLE_CENTER", "OBSTACLE_HALF", "TwoGoalEnv", "make_twogoal_env"]

CONTROL_HZ = TWOGOAL.control_hz
MAX_EPISODE_STEPS = TWOGOAL.max_episode_steps
MAX_SPEED = 0.3  # m/s commanded at |action| = 1
AGENT_RADIUS = 0.02
GOAL_RADIUS = 0.03  # success when the agent's centre is this close to a goal centre
GOALS = np.array([[-0.2, 0.22], [0.2, 0.22]])
OBSTACLE_CENTER = np.array([0.0, 0.02])
OBSTACLE_HALF = np.array([0.10, 0.04])
START = np.array([0.0, -0.25])
START_NOISE = 0.05
ARENA_HALF = 0.35

_XML = f"""
<mujoco model="twogoal">
  <option timestep="0.01" gravity="0 0 0" integrator="implicitfast"/>
  <visual>
    <global offwidth="512" offheight="512"/>
    <quality shadowsize="0"/>
  </visual>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" castshadow="false" diffuse="0.8 0.8 0.8"/>
    <camera name="overhead" pos="0 0 0.95" fovy="45"/>
    <geom name="floor" type="plane" size="{ARENA_HALF} {ARENA_HALF} 0.01" rgba="0.92 0.92 0.92 1"
          contype="0" conaffinity="0"/>
    <geom name="wall_n" type="box" pos="0 {ARENA_HALF + 0.01} 0.02"
          size="{ARENA_HALF + 0.02} 0.01 0.02" rgba="0.3 0.3 0.3 1"/>
    <geom name="wall_s" type="box" pos="0 {-ARENA_HALF - 0.01} 0.02"
          size="{ARENA_HALF + 0.02} 0.01 0.02" rgba="0.3 0.3 0.3 1"/>
    <geom name="wall_e" type="box" pos="{ARENA_HALF + 0.01} 0 0.02"
          size="0.01 {ARENA_HALF + 0.02} 0.02" rgba="0.3 0.3 0.3 1"/>
    <geom name="wall_w" type="box" pos="{-ARENA_HALF - 0.01} 0 0.02"
          size="0.01 {ARENA_HALF + 0.02} 0.02" rgba="0.3 0.3 0.3 1"/>
    <geom name="obstacle" type="box" pos="{OBSTACLE_CENTER[0]} {OBSTACLE_CENTER[1]} 0.02"
          size="{OBSTACLE_HALF[0]} {OBSTACLE_HALF[1]} 0.02" rgba="0.75 0.25 0.2 1"/>
    <site name="goal_left" type="cylinder" pos="{GOALS[0, 0]} {GOALS[0, 1]} 0.001"
          size="{GOAL_RADIUS + AGENT_RADIUS} 0.001" rgba="0.2 0.7 0.3 1"/>
    <site name="goal_right" type="cylinder" pos="{GOALS[1, 0]} {GOALS[1, 1]} 0.001"
          size="{GOAL_RADIUS + AGENT_RADIUS} 0.001" rgba="0.2 0.7 0.3 1"/>
    <body name="agent" pos="0 0 0.02">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom name="agent" type="sphere" size="{AGENT_RADIUS}" mass="0.1" rgba="0.2 0.35 0.8 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="4" ctrlrange="-{MAX_SPEED} {MAX_SPEED}" ctrllimited="true"/>
    <velocity name="vy" joint="y" kv="4" ctrlrange="-{MAX_SPEED} {MAX_SPEED}" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


class TwoGoalEnv(gym.Env):
    """Point mass that must reach either of two goals around an obstacle (see module docstring).

    Observations: ``agent_pos`` (2,) and ``agent_vel`` (2,) float32 in metres and m/s; with
    ``images=True`` also ``overhead_image`` (render_size, render_size, 3) uint8. Action: (2,) in
    [-1, 1], commanded velocity as a fraction of 0.3 m/s. Reward: 1 on success, else 0.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        images: bool = False,
        render_size: int = 84,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.model = mujoco.MjModel.from_xml_string(_XML)
        self.data = mujoco.MjData(self.model)
        self.images = bool(images)
        self.render_size = int(render_size)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self._n_substeps = round(1.0 / CONTROL_HZ / self.model.opt.timestep)
        self._camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "overhead")
        self._renderer: mujoco.Renderer | None = None
        obs_spaces: dict[str, spaces.Space] = {
            "agent_pos": spaces.Box(-ARENA_HALF, ARENA_HALF, (2,), np.float32),
            "agent_vel": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        }
        if self.images:
            shape = (self.render_size, self.render_size, 3)
            obs_spaces["overhead_image"] = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = TWOGOAL.action_bounds()
        self.action_space = spaces.Box(low, high, dtype=np.float32)

    @property
    def mujoco_data(self) -> mujoco.MjData:
        """The raw MjData (tests read its warning counters)."""
        return self.data

    def _render_overhead(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.render_size, self.render_size)
        self._renderer.update_scene(self.data, camera=self._camera_id)
        return self._renderer.render().copy()

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {
            "agent_pos": self.data.qpos[:2].astype(np.float32),
            "agent_vel": self.data.qvel[:2].astype(np.float32),
        }
        if self.images:
            obs["overhead_image"] = self._render_overhead()
        return obs

    def _success(self) -> bool:
        dist = np.linalg.norm(GOALS - self.data.qpos[:2], axis=1)
        return bool(dist.min() < GOAL_RADIUS)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = START + self.np_random.uniform(-START_NOISE, START_NOISE, 2)
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"twogoal: action must be finite, got {action}")
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0) * MAX_SPEED
        mujoco.mj_step(self.model, self.data, nstep=self._n_substeps)
        success = self._success()
        terminated = success and self.terminate_on_success
        return self._obs(), float(success), terminated, False, {"success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render_overhead()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_twogoal_env(
    images: bool = False,
    render_size: int = 84,
    terminate_on_success: bool = True,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    render_mode: str | None = None,
) -> gym.Env:
    """The `twogoal` env wrapped in a TimeLimit at ``max_episode_steps`` steps."""
    env = TwoGoalEnv(images, render_size, terminate_on_success, render_mode)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
