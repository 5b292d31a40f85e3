"""Scripted experts, one per task: phase machines, closed-loop on the observation dict.

Experts read only the observation dict the env returns (object poses, targets and other privileged
low-dim keys are part of it), so the same expert runs in the collector and, wrapped as a policy,
inside AsyncVectorEnv workers. Each episode draws its own gains, approach offsets, heights and
action noise from the expert's seeded generator, so demonstrations differ but are reproducible.

robosuite action (7): dx, dy, dz (1.0 = 5 cm), axis-angle rotation delta (1.0 = 0.5 rad),
gripper (-1 open, +1 close); quaternions are (x, y, z, w), as scipy's Rotation expects.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from ebt_policy.envs import twogoal

__all__ = [
    "LiftExpert",
    "TwoGoalExpert",
    "make_lift_expert",
    "make_twogoal_expert",
]

OPEN, CLOSE = -1.0, 1.0
ROT_UNIT = 0.5  # rad of rotation per unit of rotation action


def _yaw_of_axis(axis: np.ndarray) -> float:
    return float(np.arctan2(axis[1], axis[0]))


def _wrap(angle: float, period: float) -> float:
    """Angle wrapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


class _RobosuiteExpert:
    """Shared machinery: position/orientation servoing and per-episode randomisation."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """New episode: forget the phase, draw this episode's gains, offsets and noise level."""
        self.phase = "approach"
        self.phase_steps = 0
        self.ref_rot: Rotation | None = None  # gripper orientation at the episode's first step
        self.gain = self.rng.uniform(8.0, 12.0)
        self.noise = self.rng.uniform(0.0, 0.05)
        self.hover = self.rng.uniform(0.06, 0.12)
        self._draw_episode()

    def _draw_episode(self) -> None:
        """Task-specific per-episode random choices."""

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _servo(
        self,
        obs: Mapping[str, np.ndarray],
        target_pos: np.ndarray,
        gripper: float,
        yaw: float = 0.0,
        max_speed: float = 1.0,
    ) -> np.ndarray:
        """Action moving the gripper toward ``target_pos`` with yaw ``yaw`` about world z (relative
        to its starting orientation)."""
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        rot = Rotation.from_quat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        if self.ref_rot is None:
            self.ref_rot = rot
        action = np.zeros(7)
        err = np.asarray(target_pos, dtype=np.float64) - eef
        action[:3] = np.clip(self.gain * err, -max_speed, max_speed)
        action[:3] += self.rng.normal(0.0, self.noise, 3)
        target_rot = Rotation.from_euler("z", yaw) * self.ref_rot
        action[3:6] = np.clip((target_rot * rot.inv()).as_rotvec() / ROT_UNIT * 2.0, -1.0, 1.0)
        action[6] = gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _grasp_yaw(self, obj_quat: np.ndarray, period: float) -> float:
        """Yaw (about world z, relative to the start orientation) that lines the fingers' closing
        axis (the gripper's y axis) up with the object's x axis, modulo ``period``."""
        assert self.ref_rot is not None
        finger_yaw = _yaw_of_axis(self.ref_rot.as_matrix()[:, 1])
        obj_yaw = _yaw_of_axis(Rotation.from_quat(obj_quat).as_matrix()[:, 0])
        return _wrap(obj_yaw - finger_yaw, period)


class LiftExpert(_RobosuiteExpert):
    """Lift: above the cube, descend, close, lift; start over if the cube slips out."""

    def _draw_episode(self) -> None:
        xy, z = self.rng.uniform(-0.005, 0.005, 2), self.rng.uniform(-0.01, 0.0)
        self.grasp_offset = np.append(xy, z)
        self.close_steps = int(self.rng.integers(8, 13))
        self.lift_height = self.rng.uniform(0.12, 0.2)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action (float32 (7,))."""
        self.phase_steps += 1
        cube = np.asarray(obs["cube_pos"], dtype=np.float64)
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        if self.ref_rot is None:
            self.ref_rot = Rotation.from_quat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        yaw = self._grasp_yaw(obs["cube_quat"], np.pi / 2)
        grasp = cube + self.grasp_offset
        if self.phase == "approach":
            target = grasp + [0.0, 0.0, self.hover]
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.03:
                self._set_phase("descend")
            return self._servo(obs, target, OPEN, yaw)
        if self.phase == "descend":
            if np.linalg.norm(grasp - eef) < 0.008 or self.phase_steps > 40:
                self._set_phase("close")
            return self._servo(obs, grasp, OPEN, yaw, max_speed=0.6)
        if self.phase == "close":
            if self.phase_steps >= self.close_steps:
                self._set_phase("lift")
                self.lift_target = eef + [0.0, 0.0, self.lift_height]
            return self._servo(obs, grasp, CLOSE, yaw)
        # lift: if the cube is no longer between the fingers, start over
        if np.linalg.norm(cube - eef) > 0.04:
            self._set_phase("approach")
            return self._servo(obs, eef + [0, 0, 0.05], OPEN, yaw)
        return self._servo(obs, self.lift_target, CLOSE, yaw)


class TwoGoalExpert:
    """twogoal: pick a side at random each episode, pass beside the obstacle, then go to that
    side's goal. Waypoints, speed and noise vary per episode."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """New episode: draw the side (the mode) and this episode's path."""
        self.side = 1.0 if self.rng.random() < 0.5 else -1.0
        x_clear = twogoal.OBSTACLE_CENTER[0] + twogoal.OBSTACLE_HALF[0] + twogoal.AGENT_RADIUS
        y_below = twogoal.OBSTACLE_CENTER[1] - twogoal.OBSTACLE_HALF[1]
        self.waypoints = [
            np.array(
                [
                    self.side * self.rng.uniform(x_clear + 0.04, x_clear + 0.1),
                    self.rng.uniform(y_below - 0.06, y_below - 0.01),
                ]
            ),
            twogoal.GOALS[1 if self.side > 0 else 0] + self.rng.uniform(-0.01, 0.01, 2),
        ]
        self.index = 0
        self.gain = self.rng.uniform(8.0, 14.0)
        self.speed = self.rng.uniform(0.7, 1.0)
        self.noise = self.rng.uniform(0.0, 0.1)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action (float32 (2,))."""
        pos = np.asarray(obs["agent_pos"], dtype=np.float64)
        if self.index == 0 and np.linalg.norm(self.waypoints[0] - pos) < 0.04:
            self.index = 1
        err = self.waypoints[self.index] - pos
        action = self.gain * err
        norm = np.linalg.norm(action)
        if norm > self.speed:
            action *= self.speed / norm
        action += self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_lift_expert(seed: int) -> LiftExpert:
    """Scripted expert for `lift`."""
    return LiftExpert(seed)


def make_twogoal_expert(seed: int) -> TwoGoalExpert:
    """Scripted expert for `twogoal`."""
    return TwoGoalExpert(seed)
