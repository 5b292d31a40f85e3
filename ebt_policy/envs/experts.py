"""Scripted experts, one per task, closed-loop on the observation dict: phase machines for the
robosuite tasks and `twogoal`, model-predictive pushing for `pusht`.

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
    "CanExpert",
    "LiftExpert",
    "PushTExpert",
    "SquareExpert",
    "StackExpert",
    "TwoGoalExpert",
    "make_can_expert",
    "make_lift_expert",
    "make_pusht_expert",
    "make_square_expert",
    "make_stack_expert",
    "make_twogoal_expert",
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


class TwoGoalExpert:
    """twogoal: go straight up toward the obstacle, stop, then pick a side at random, pass beside
    the obstacle and go to that side's goal.

    The side does not depend on the state: every demonstration goes up the same corridor (start
    positions spread +-5 cm, the obstacle is 20 cm wide), holds still for a few steps at a random
    height below the obstacle and turns left or right from rest. At the turn the same states
    (and the same recent history: standing still) carry both actions, so a policy that regresses
    the mean action gets no sideways push there and stays put. Waypoints, hold time, speed and
    noise vary per episode.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """New episode: draw the side (the mode) and this episode's path."""
        self.side = 1.0 if self.rng.random() < 0.5 else -1.0
        x_clear = twogoal.OBSTACLE_CENTER[0] + twogoal.OBSTACLE_HALF[0] + twogoal.AGENT_RADIUS
        y_below = twogoal.OBSTACLE_CENTER[1] - twogoal.OBSTACLE_HALF[1] - twogoal.AGENT_RADIUS
        self.turn_y = self.rng.uniform(y_below - 0.08, y_below - 0.03)
        self.beside = np.array(
            [
                self.side * self.rng.uniform(x_clear + 0.04, x_clear + 0.07),
                self.turn_y + self.rng.uniform(0.0, 0.03),
            ]
        )
        self.goal = twogoal.GOALS[1 if self.side > 0 else 0] + self.rng.uniform(-0.01, 0.01, 2)
        self.wait = int(self.rng.integers(4, 11))  # steps to hold still before turning
        self.stage = 0  # 0: up the corridor, 1: hold, 2: sideways, 3: to the goal
        self.gain = self.rng.uniform(8.0, 14.0)
        self.speed = self.rng.uniform(0.7, 1.0)
        self.noise = self.rng.uniform(0.0, 0.1)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action (float32 (2,))."""
        pos = np.asarray(obs["agent_pos"], dtype=np.float64)
        if self.stage == 0 and pos[1] >= self.turn_y - 0.005:
            self.stage, self.hold = 1, np.array([pos[0], self.turn_y])
        if self.stage == 1:
            self.wait -= 1
            if self.wait < 0:
                self.stage = 2
        if self.stage == 2 and np.linalg.norm(self.beside - pos) < 0.04:
            self.stage = 3
        if self.stage == 0:
            target = np.array([pos[0], self.turn_y])  # straight up, whatever x the start had
        elif self.stage == 1:
            target = self.hold
        else:
            target = self.beside if self.stage == 2 else self.goal
        action = self.gain * (target - pos)
        norm = np.linalg.norm(action)
        if norm > self.speed:
            action *= self.speed / norm
        action += self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


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


def make_twogoal_expert(seed: int) -> TwoGoalExpert:
    """Scripted expert for `twogoal`."""
    return TwoGoalExpert(seed)


# --- PushT ------------------------------------------------------------------------------------

# The T in its body frame (gym-pusht, scale 30): bar x in [-60, 60], y in [0, 30]; stem x in
# [-15, 15], y in [30, 120]. Outline corners in order, and the centre of gravity.
_T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float
)
_T_KEYPOINTS = np.array(
    [[-60, 30], [60, 30], [60, 0], [-60, 0], [-15, 30], [-15, 120], [15, 120], [15, 30]], float
)
_T_COG = np.array([0.0, 45.0])
_AGENT_RADIUS = 15.0


def _corner_offsets() -> tuple[np.ndarray, np.ndarray]:
    """The outline's corners and the unit bisectors of their two edges' outward normals (a point
    ``r * sqrt(2)`` out along the bisector clears both edges by ``r``)."""
    n = len(_T_OUTLINE)
    bisectors = []
    for i in range(n):
        prev_dir = _T_OUTLINE[i] - _T_OUTLINE[i - 1]
        next_dir = _T_OUTLINE[(i + 1) % n] - _T_OUTLINE[i]
        n1 = np.array([prev_dir[1], -prev_dir[0]]) / np.linalg.norm(prev_dir)
        n2 = np.array([next_dir[1], -next_dir[0]]) / np.linalg.norm(next_dir)
        b = n1 + n2
        bisectors.append(b / np.linalg.norm(b))
    return _T_OUTLINE.copy(), np.array(bisectors)


_CORNER_OFFSETS = _corner_offsets()


def _rot2(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ _rot2(pose[2]).T + pose[:2]


def _outline_contacts(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along the T's outline (body frame), ``spacing`` apart, with outward normals."""
    points, normals = [], []
    n = len(_T_OUTLINE)
    # Outline goes counter-clockwise in pymunk's frame, so the outward normal is the edge
    # direction turned clockwise.
    for i in range(n):
        a, b = _T_OUTLINE[i], _T_OUTLINE[(i + 1) % n]
        length = np.linalg.norm(b - a)
        direction = (b - a) / length
        normal = np.array([direction[1], -direction[0]])
        k = max(int(length // spacing), 1)
        for j in range(k):
            t = (j + 0.5) / k
            points.append(a + t * (b - a))
            normals.append(normal)
    return np.array(points), np.array(normals)


class PushTExpert:
    """PushT: model-predictive pushing with a private copy of the gym-pusht physics.

    At each decision it simulates straight pushes (up to 100 px far from the goal, 20 px close to
    it, where it also pushes slower) from points along the T's outline, inward along the outline
    normal and tilted +-23 degrees, and from where the agent stands in 12 directions. It keeps the
    push (and its length) that brings the T's keypoints closest to the target's, charging a little
    for the walk to the contact point, walks there around the block (shortest path over the T's
    corners pushed out by the agent's radius), pushes, and plans again. Randomised per episode:
    outline sample spacing and offsets, push speed, how far it aims past corners while walking,
    and a little action noise.
    """

    def __init__(self, seed: int) -> None:
        from ebt_policy.envs.pusht import GOAL_POSE, _import_pusht

        self.rng = np.random.default_rng(seed)
        self._sim = _import_pusht()(obs_type="state")
        self._sim._setup()
        self._goal_kp = _to_world(GOAL_POSE, _T_KEYPOINTS)
        self.reset()

    def reset(self) -> None:
        """New episode: draw this episode's speeds and candidate pattern."""
        self.phase = "plan"
        self.plan: tuple[np.ndarray, np.ndarray, int] | None = None  # (start, direction, steps)
        # target this far ahead of the agent while pushing; it then moves at about half of it
        self.push_speed = self.rng.uniform(16.0, 24.0)  # pixels per step
        self.speed = self.push_speed  # the current plan's push speed
        self.walk_lead = self.rng.uniform(0.3, 0.6)
        self.noise = self.rng.uniform(0.0, 1.5)
        self.spacing = self.rng.uniform(12.0, 16.0)
        self.push_steps = 0
        self.walk_steps = 0
        self.waypoints: list[np.ndarray] = []

    # --- model ------------------------------------------------------------------------------
    def _cost(self, pose: np.ndarray) -> float:
        return float(np.mean(np.sum((_to_world(pose, _T_KEYPOINTS) - self._goal_kp) ** 2, axis=1)))

    def _simulate(
        self, pose: np.ndarray, start: np.ndarray, direction: np.ndarray, steps: int
    ) -> list[np.ndarray]:
        """Block poses after each of ``steps`` pushing steps from ``start`` along ``direction``
        (gym-pusht's PD agent and pymunk physics; the block keeps no velocity between steps)."""
        sim = self._sim
        block, agent = sim.block, sim.agent
        block.angle = float(pose[2])
        block.position = (float(pose[0]), float(pose[1]))
        block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
        agent.position = (float(start[0]), float(start[1]))
        agent.velocity = (0.0, 0.0)
        dt, n_sub = sim.dt, int(1 / (sim.dt * sim.control_hz))
        kp, kv = sim.k_p, sim.k_v
        poses = []
        for _ in range(steps):
            px, py = agent.position
            tx, ty = px + direction[0] * self.speed, py + direction[1] * self.speed
            for _ in range(n_sub):
                (px, py), (vx, vy) = agent.position, agent.velocity
                agent.velocity = (
                    vx + (kp * (tx - px) - kv * vx) * dt,
                    vy + (kp * (ty - py) - kv * vy) * dt,
                )
                sim.space.step(dt)
            poses.append(np.array([block.position.x, block.position.y, block.angle]))
        return poses

    def _choose_push(
        self, pose: np.ndarray, agent: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, list[np.ndarray]]:
        """Best push found: (start point, direction, steps, walking waypoints to the start).
        steps == 0 when no push improves on the current pose."""
        from shapely.geometry import Point, Polygon

        block = Polygon(_to_world(pose, _T_OUTLINE))
        points, normals = _outline_contacts(self.spacing)
        points = points + self.rng.uniform(-3, 3, points.shape) * (normals == 0)
        rot = _rot2(pose[2])
        current = self._cost(pose)
        error = np.sqrt(current)
        # long pushes while far, short ones to finish
        max_length = 100.0 if error > 60 else 50.0 if error > 20 else 20.0
        # slow, fine pushes near the goal (coverage 0.95 needs the T within a few pixels)
        self.speed = self.push_speed if error > 20 else self.push_speed / 2.5
        max_steps = int(np.ceil((max_length + 4.0) / self.speed))
        candidates = []
        for point, normal in zip(points, normals, strict=True):
            world_normal = rot @ normal
            start = pose[:2] + rot @ point + world_normal * (_AGENT_RADIUS + 4.0)
            if not (0.0 <= start[0] <= 512.0 and 0.0 <= start[1] <= 512.0):
                continue  # out of the action range
            if Point(start).distance(block) < _AGENT_RADIUS + 2.0:
                continue  # inside a notch corner: the agent would touch another edge
            walk_cost = 0.0005 * np.linalg.norm(start - agent) * current  # 100 px: 5%
            for tilt in (0.0, 0.4, -0.4):
                direction = _rot2(tilt) @ -world_normal
                poses = self._simulate(pose, start, direction, max_steps)
                costs = [self._cost(p) for p in poses]
                k = int(np.argmin(costs))
                if costs[k] < current:  # improves the pose; the walk only ranks candidates
                    candidates.append((costs[k] + walk_cost, start, direction, k + 1))
        # pushes from where the agent stands (no walk): keep going, or veer
        for angle in np.linspace(-np.pi, np.pi, 12, endpoint=False):
            direction = np.array([np.cos(angle), np.sin(angle)])
            poses = self._simulate(pose, agent, direction, max_steps)
            costs = [self._cost(p) for p in poses]
            k = int(np.argmin(costs))
            if costs[k] < current:
                candidates.append((costs[k], agent, direction, k + 1))
        candidates.sort(key=lambda c: c[0])
        for _, start, direction, steps in candidates[:20]:
            path = self._path(pose, agent, start)
            if path:
                return start, direction, steps, path
        return agent, np.zeros(2), 0, []

    # --- walking ----------------------------------------------------------------------------
    def _path(self, pose: np.ndarray, agent: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Shortest walk from ``agent`` to ``goal`` that keeps clear of the block: a visibility
        graph over the T's corners pushed out by the agent's radius."""
        from shapely.geometry import LineString, Polygon

        block = Polygon(_to_world(pose, _T_OUTLINE))
        clearance = _AGENT_RADIUS + 1.0
        nodes = [agent, goal]
        corners, bisectors = _CORNER_OFFSETS
        out = corners + bisectors * (_AGENT_RADIUS + 5.0) * np.sqrt(2)
        for p in _to_world(pose, out):
            # the agent is kinematic: walls do not stop it, only the action range does
            if 0.0 <= p[0] <= 512.0 and 0.0 <= p[1] <= 512.0:
                nodes.append(p)
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        done = np.zeros(n, bool)
        for _ in range(n):  # Dijkstra on a dozen nodes
            i = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[i]) or i == 1:
                break
            done[i] = True
            for j in range(n):
                if done[j]:
                    continue
                d = dist[i] + np.linalg.norm(nodes[j] - nodes[i])
                if d < dist[j] and LineString([nodes[i], nodes[j]]).distance(block) >= clearance:
                    dist[j], prev[j] = d, i
        if prev[1] < 0:
            return []
        path, i = [], 1
        while i != 0:
            path.append(nodes[i])
            i = int(prev[i])
        return path[::-1]

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action: the agent's target position (float32 (2,), pixels)."""
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        pose = np.asarray(obs["block_pose"], dtype=np.float64)
        if self.phase == "push":
            assert self.plan is not None
            _, direction, steps = self.plan
            self.push_steps += 1
            if self.push_steps <= steps:
                return self._out(agent + direction * self.speed)
            self.phase = "plan"
        if self.phase == "walk" and self.walk_steps > 40:
            self.phase = "plan"  # the walk went wrong (the block moved): plan afresh
        if self.phase == "plan":
            start, direction, steps, self.waypoints = self._choose_push(pose, agent)
            self.plan = (start, direction, steps)
            self.walk_steps = 0
            self.phase = "walk"
        assert self.plan is not None
        start, direction, steps = self.plan
        if steps == 0:  # no push helps from here: step back from the block and plan again
            self.phase = "plan"
            cog = _to_world(pose, _T_COG[None])[0]
            # (a spot 110 px from the T's centre: clear of it, never off into a corner)
            away = agent - cog
            return self._out(cog + away / max(np.linalg.norm(away), 1e-6) * 110.0)
        self.walk_steps += 1
        if np.linalg.norm(start - agent) < 3.0:
            self.phase, self.push_steps = "push", 1
            return self._out(agent + direction * self.speed)
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - agent) < 10.0:
            self.waypoints.pop(0)
        # The agent's PD controller lags (a target d away is ~75% unreached after one step), so
        # aim past intermediate corners; aim exactly at the last one, in front of the block.
        target = self.waypoints[0]
        if len(self.waypoints) > 1:
            target = target + self.walk_lead * (target - agent)
        return self._out(target)

    def _out(self, target: np.ndarray) -> np.ndarray:
        target = target + self.rng.normal(0.0, self.noise, 2)
        return np.clip(target, 0.0, 512.0).astype(np.float32)


def make_pusht_expert(seed: int) -> PushTExpert:
    """Scripted expert for `pusht`."""
    return PushTExpert(seed)
