"""Scripted experts for the robosuite tasks: one phase machine (approach, grasp, carry, place),
closed-loop on the observation dict, specialised per task.

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

__all__ = [
    "CanExpert",
    "LiftExpert",
    "SquareExpert",
    "StackExpert",
    "make_can_expert",
    "make_lift_expert",
    "make_square_expert",
    "make_stack_expert",
]

OPEN, CLOSE = -1.0, 1.0
ROT_UNIT = 0.5  # rad of rotation per unit of rotation action


def _yaw_of_axis(axis: np.ndarray) -> float:
    return float(np.arctan2(axis[1], axis[0]))


def _wrap(angle: float, period: float) -> float:
    """Angle wrapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


# Gripper pointing straight down, fingers closing along world y: the Panda's home orientation
# without its ~8 degree tilt. Yaw commands rotate it about world z.
DOWN = Rotation.from_matrix([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def _yaw_of(rot: Rotation) -> float:
    """Yaw of a gripper orientation about world z, relative to DOWN."""
    x_axis = (rot * DOWN.inv()).as_matrix()[:, 0]
    return _yaw_of_axis(x_axis)


def _object_yaw(quat: np.ndarray, axis: int = 0) -> float:
    """Yaw of an object's local axis ``axis`` (0 = x, 1 = y) in the world."""
    return _yaw_of_axis(Rotation.from_quat(np.asarray(quat, dtype=np.float64)).as_matrix()[:, axis])


class _PickPlaceExpert:
    """Phase machine shared by the robosuite experts.

    approach (above the grasp point, yaw aligned) -> descend -> close -> lift -> carry (object
    over its place target, keeping the in-hand offset) -> lower -> release -> retreat. If the
    object slips out of the hand it starts over. Subclasses say where to grasp, the grasp yaw,
    where the object goes and how high to carry it.
    """

    obj_pos_key: str
    obj_quat_key: str
    grasp_period = np.pi / 2  # symmetry of the grasp yaw (cubes: 90 degrees)
    slip_tolerance = 0.03
    place_tolerance = 0.01  # how far (xy) the object may be from its place target while lowering

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """New episode: forget the phase, draw this episode's gains, offsets and noise level."""
        self._set_phase("approach")
        self.gain = self.rng.uniform(8.0, 12.0)
        self.noise = self.rng.uniform(0.0, 0.04)
        self.hover = self.rng.uniform(0.06, 0.12)
        self.grasp_jitter = np.append(
            self.rng.uniform(-0.004, 0.004, 2), self.rng.uniform(-0.005, 0.005)
        )
        self.close_steps = int(self.rng.integers(8, 13))
        self.release_steps = int(self.rng.integers(5, 9))
        self.carry_speed = self.rng.uniform(0.6, 1.0)
        self.carry_lift = self.rng.uniform(0.0, 0.03)
        self.yaw_cmd = 0.0
        self.hand_offset = np.zeros(3)  # eef - object, measured when the grasp closes
        self._draw_episode()

    def _draw_episode(self) -> None:
        """Task-specific per-episode random choices."""

    # --- task hooks -------------------------------------------------------------------------
    def _grasp_point(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(obs[self.obj_pos_key], dtype=np.float64)

    def _grasp_yaw(self, obs: Mapping[str, np.ndarray]) -> float:
        # fingers (gripper y axis, world y at yaw 0) across the object's x axis faces
        return self._nearest_yaw(_object_yaw(obs[self.obj_quat_key]) - np.pi / 2)

    def _nearest_yaw(self, yaw: float) -> float:
        """Of the yaws equivalent to ``yaw`` modulo grasp_period, the one nearest the current yaw
        command (so the command does not jump by a period when the object sits near a boundary)."""
        return self.yaw_cmd + _wrap(yaw - self.yaw_cmd, self.grasp_period)

    def _place_target(self, obs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Where the object's position should end up (None: just lift)."""
        return None

    def _carry_z(self, obs: Mapping[str, np.ndarray]) -> float:
        raise NotImplementedError

    def _carry_yaw(self, obs: Mapping[str, np.ndarray]) -> float:
        return self.yaw_cmd

    # --- control ----------------------------------------------------------------------------
    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _action(
        self, obs: Mapping[str, np.ndarray], err: np.ndarray, gripper: float, speed: float = 1.0
    ) -> np.ndarray:
        """Action moving the gripper by ``err`` (metres) toward yaw ``self.yaw_cmd``."""
        rot = Rotation.from_quat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * err, -speed, speed) + self.rng.normal(0, self.noise, 3)
        target_rot = Rotation.from_euler("z", self.yaw_cmd) * DOWN
        # gain 2: a 0.25 rad error asks for one full unit (0.5 rad) of rotation
        action[3:6] = (target_rot * rot.inv()).as_rotvec() / ROT_UNIT * 2.0
        action[6] = gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _yaw_error(self, obs: Mapping[str, np.ndarray]) -> float:
        rot = Rotation.from_quat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        return abs(_wrap(self.yaw_cmd - _yaw_of(rot), 2 * np.pi))

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action (float32 (7,)) for the observation dict ``obs``."""
        self.phase_steps += 1
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        obj = np.asarray(obs[self.obj_pos_key], dtype=np.float64)
        holding = self.phase in ("lift", "carry", "lower")
        if holding and np.linalg.norm(eef - obj - self.hand_offset) > self.slip_tolerance:
            self._set_phase("recover")  # the object slipped: open, back off, start over
        if self.phase == "recover":
            if self.phase_steps > 8:
                self._set_phase("approach")
            return self._action(obs, np.array([0.0, 0.0, 0.1]), OPEN, 0.5)

        if self.phase == "approach":
            self.yaw_cmd = self._grasp_yaw(obs)
            target = self._grasp_point(obs) + self.grasp_jitter + [0.0, 0.0, self.hover]
            err = target - eef
            aligned = self._yaw_error(obs) < 0.08
            if np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.03 and aligned:
                self._set_phase("descend")
            return self._action(obs, err, OPEN)
        if self.phase == "descend":
            self.yaw_cmd = self._grasp_yaw(obs)
            err = self._grasp_point(obs) + self.grasp_jitter - eef
            if np.linalg.norm(err) < 0.008 or self.phase_steps > 40:
                self._set_phase("close")
            return self._action(obs, err, OPEN, 0.5)
        if self.phase == "close":
            err = self._grasp_point(obs) + self.grasp_jitter - eef
            if self.phase_steps >= self.close_steps:
                self.hand_offset = eef - obj
                self._set_phase("lift")
            return self._action(obs, 0.3 * err, CLOSE)

        place = self._place_target(obs)
        carry_z = self._carry_z(obs) + self.carry_lift
        if self.phase == "lift":
            err = np.array([0.0, 0.0, carry_z - obj[2]])
            if self.phase_steps > 40:  # the object does not come up: the grasp missed
                self._set_phase("recover")
                return self._action(obs, np.zeros(3), OPEN)
            if place is not None and err[2] < 0.02:
                self._set_phase("carry")
            return self._action(obs, err, CLOSE, self.carry_speed)
        assert place is not None
        if self.phase == "carry":
            self.yaw_cmd = self._carry_yaw(obs)
            err = np.array([place[0] - obj[0], place[1] - obj[1], carry_z - obj[2]])
            if np.linalg.norm(err[:2]) < self.place_tolerance and self._yaw_error(obs) < 0.05:
                self._set_phase("lower")
            return self._action(obs, err, CLOSE, self.carry_speed)
        if self.phase == "lower":
            self.yaw_cmd = self._carry_yaw(obs)
            err = place - obj
            if err[2] > -0.01 or self.phase_steps > 80:
                self._set_phase("release")
            elif np.linalg.norm(err[:2]) > self.place_tolerance:
                err[2] = 0.0  # drifted off the spot: hold the height until back over it
            return self._action(obs, err, CLOSE, 0.4)
        if self.phase == "release":
            if self.phase_steps >= self.release_steps:
                self.retreat_target = eef + [0.0, 0.0, 0.12]
                self._set_phase("retreat")
            return self._action(obs, np.zeros(3), OPEN)
        return self._action(obs, self.retreat_target - eef, OPEN)


class LiftExpert(_PickPlaceExpert):
    """Lift: above the cube, descend, close, lift."""

    obj_pos_key, obj_quat_key = "cube_pos", "cube_quat"

    def _carry_z(self, obs: Mapping[str, np.ndarray]) -> float:
        return 0.98  # ~15 cm above the table (success needs 4 cm)


class CanExpert(_PickPlaceExpert):
    """Can: grasp a little above the can's centre (lower, the fingers hit the bin floor), carry
    over the bin walls to the can's target bin quarter, lower, release, back off."""

    obj_pos_key, obj_quat_key = "Can_pos", "Can_quat"
    grasp_period = 2 * np.pi  # a cylinder: any yaw works, keep the start orientation

    def _draw_episode(self) -> None:
        self.grasp_above = self.rng.uniform(0.01, 0.025)
        self.drop_height = self.rng.uniform(0.10, 0.13)
        # The success check accepts the whole bin quarter (+-9.7 cm in x, +-12 cm in y around
        # target_pos). Its centre is at the edge of the Panda's reach, so aim at the part of the
        # quarter nearer the robot.
        self.place_offset = np.array([-0.045, -0.06]) + self.rng.uniform(-0.02, 0.02, 2)

    def _grasp_point(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(obs["Can_pos"], dtype=np.float64) + [0.0, 0.0, self.grasp_above]

    def _grasp_yaw(self, obs: Mapping[str, np.ndarray]) -> float:
        return 0.0

    def _place_target(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        target = np.asarray(obs["target_pos"], dtype=np.float64)
        return target + [*self.place_offset, self.drop_height]

    def _carry_z(self, obs: Mapping[str, np.ndarray]) -> float:
        return float(obs["target_pos"][2]) + 0.22


class SquareExpert(_PickPlaceExpert):
    """Square: grasp the nut's handle (5.4 cm along the nut's x axis) with the fingers across it,
    lift, turn the nut to a multiple of 90 degrees, carry its centre over the square peg, lower
    slowly and release when the nut is ~4.5 cm above the table."""

    obj_pos_key, obj_quat_key = "SquareNut_pos", "SquareNut_quat"
    grasp_period = np.pi
    slip_tolerance = 0.04
    place_tolerance = 0.004  # the nut's hole clears the peg by a few millimetres
    # The handle spans 2.9-7.9 cm along the nut's x axis; the ring's corners reach 4.4 cm. Grasp
    # past the handle's middle so the fingers clear the ring.
    handle = 0.062

    def _draw_episode(self) -> None:
        self.handle_along = self.rng.uniform(-0.003, 0.003)

    def _grasp_point(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        rot = Rotation.from_quat(np.asarray(obs["SquareNut_quat"], dtype=np.float64))
        nut = np.asarray(obs["SquareNut_pos"], dtype=np.float64)
        return nut + rot.apply([self.handle + self.handle_along, 0.0, 0.0])

    def _grasp_yaw(self, obs: Mapping[str, np.ndarray]) -> float:
        # gripper x axis along the handle, so the fingers (gripper y) close across it
        return self._nearest_yaw(_object_yaw(obs["SquareNut_quat"]))

    def _place_target(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        peg = np.asarray(obs["peg_pos"], dtype=np.float64)
        return np.array([peg[0], peg[1], 0.82 + 0.045])

    def _carry_z(self, obs: Mapping[str, np.ndarray]) -> float:
        return 0.82 + 0.18  # the peg's top is at 0.95

    def _carry_yaw(self, obs: Mapping[str, np.ndarray]) -> float:
        # Turn the gripper until the nut's yaw is a multiple of 90 degrees (the peg is square).
        # Of those, never the one with the handle pointing away from the robot (+x): the gripper
        # would then have to reach 5 cm past the peg, at the edge of the Panda's workspace.
        rot = Rotation.from_quat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        nut_yaw = _object_yaw(obs["SquareNut_quat"])
        goals = np.array([np.pi / 2, np.pi, -np.pi / 2])
        turns = np.array([_wrap(g - nut_yaw, 2 * np.pi) for g in goals])
        return _yaw_of(rot) + float(turns[np.argmin(np.abs(turns))])


class StackExpert(_PickPlaceExpert):
    """Stack: pick cube A, carry it over cube B, lower until it nearly touches, release."""

    obj_pos_key, obj_quat_key = "cubeA_pos", "cubeA_quat"

    def _draw_episode(self) -> None:
        self.drop_gap = self.rng.uniform(0.003, 0.01)

    def _place_target(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        cube_b = np.asarray(obs["cubeB_pos"], dtype=np.float64)
        return cube_b + [0.0, 0.0, 0.025 + 0.02 + self.drop_gap]  # half sizes of B and A

    def _carry_z(self, obs: Mapping[str, np.ndarray]) -> float:
        return float(obs["cubeB_pos"][2]) + 0.1


def make_lift_expert(seed: int) -> LiftExpert:
    """Scripted expert for `lift`."""
    return LiftExpert(seed)


def make_can_expert(seed: int) -> CanExpert:
    """Scripted expert for `can`."""
    return CanExpert(seed)


def make_square_expert(seed: int) -> SquareExpert:
    """Scripted expert for `square`."""
    return SquareExpert(seed)


def make_stack_expert(seed: int) -> StackExpert:
    """Scripted expert for `stack`."""
    return StackExpert(seed)
