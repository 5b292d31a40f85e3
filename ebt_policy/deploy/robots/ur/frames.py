"""Frames of a UR arm: the robot's base frame (what the controller and the teach pendant use)
and the world frame the policy sees (the frame of our simulated tasks' observations).

UR poses are ``[x, y, z, rx, ry, rz]``: position in metres and orientation as a rotation vector
(axis times angle, radians), in the base frame. Our observations use robosuite's convention:
``robot0_eef_pos`` (m) and ``robot0_eef_quat`` as a unit quaternion in **xyzw** order (scalar
last, which is also scipy's order). :class:`BaseFrame` holds where the base sits in the world and
converts poses both ways.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["BaseFrame", "continuous_quat", "quat_to_rotvec", "rotvec_to_quat"]


def rotvec_to_quat(rotvec: Sequence[float]) -> np.ndarray:
    """Rotation vector (rad) -> unit quaternion (4,) in xyzw order."""
    return Rotation.from_rotvec(np.asarray(rotvec, np.float64)).as_quat()


def quat_to_rotvec(quat_xyzw: Sequence[float]) -> np.ndarray:
    """Quaternion in xyzw order (normalised here) -> rotation vector (3,) with angle <= pi."""
    return Rotation.from_quat(np.asarray(quat_xyzw, np.float64)).as_rotvec()


def continuous_quat(quat: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """``quat`` or ``-quat`` (the same rotation), whichever is closer to ``previous``, so an
    observed quaternion does not jump sign between frames (the rotation-vector conversion picks
    a sign per frame)."""
    if previous is not None and float(np.dot(quat, previous)) < 0.0:
        return -quat
    return quat


class BaseFrame:
    """Where the robot's base sits in the world: ``world_T_base``.

    Args:
        position: base origin in world coordinates (m).
        quat_xyzw: base orientation in the world (unit quaternion, xyzw).
    """

    def __init__(
        self,
        position: Sequence[float] = (0.0, 0.0, 0.0),
        quat_xyzw: Sequence[float] = (0.0, 0.0, 0.0, 1.0),
    ) -> None:
        self.position = np.asarray(position, np.float64).reshape(3)
        self.rotation = Rotation.from_quat(np.asarray(quat_xyzw, np.float64))

    # ------------------------------------------------------------------ poses
    def to_world(self, pos_base: np.ndarray, rot_base: Rotation) -> tuple[np.ndarray, Rotation]:
        """A pose in the base frame -> the same pose in the world frame."""
        return self.rotation.apply(pos_base) + self.position, self.rotation * rot_base

    def to_base(self, pos_world: np.ndarray, rot_world: Rotation) -> tuple[np.ndarray, Rotation]:
        """A pose in the world frame -> the same pose in the base frame."""
        inv = self.rotation.inv()
        return inv.apply(np.asarray(pos_world, np.float64) - self.position), inv * rot_world

    # ------------------------------------------------------------------ UR pose vectors
    def ur_pose_to_world(self, tcp_pose: Sequence[float]) -> tuple[np.ndarray, Rotation]:
        """A UR ``[x, y, z, rx, ry, rz]`` (base frame) -> world position and rotation."""
        p = np.asarray(tcp_pose, np.float64).reshape(6)
        return self.to_world(p[:3], Rotation.from_rotvec(p[3:]))

    def world_to_ur_pose(self, pos_world: np.ndarray, rot_world: Rotation) -> list[float]:
        """World position and rotation -> a UR ``[x, y, z, rx, ry, rz]`` in the base frame."""
        pos, rot = self.to_base(pos_world, rot_world)
        return [float(v) for v in (*pos, *rot.as_rotvec())]
