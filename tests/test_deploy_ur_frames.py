"""UR frames (base <-> world, rotation vector <-> quaternion) against known poses, and the UR
config file's validation (every bad value refuses to start, naming its key)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ebt_policy.deploy.robots.ur.config import URConfig, load_ur_config
from ebt_policy.deploy.robots.ur.frames import (
    BaseFrame,
    continuous_quat,
    quat_to_rotvec,
    rotvec_to_quat,
)
from ebt_policy.errors import ConfigError

S = math.sqrt(0.5)


def same_rotation(q1: np.ndarray, q2: np.ndarray, tol: float = 1e-9) -> bool:
    return abs(abs(float(np.dot(q1, q2))) - 1.0) < tol  # q and -q are one rotation


@pytest.mark.parametrize(
    ("rotvec", "quat_xyzw"),
    [
        ([0, 0, 0], [0, 0, 0, 1]),
        ([math.pi, 0, 0], [1, 0, 0, 0]),  # a UR tool pointing down
        ([0, 0, math.pi / 2], [0, 0, S, S]),
        ([0, -math.pi / 2, 0], [0, -S, 0, S]),
    ],
)
def test_rotation_vectors_and_xyzw_quaternions_of_known_rotations(rotvec, quat_xyzw) -> None:
    assert same_rotation(rotvec_to_quat(rotvec), np.array(quat_xyzw, float))
    back = rotvec_to_quat(quat_to_rotvec(quat_xyzw))
    assert same_rotation(back, np.array(quat_xyzw, float))


def test_our_quaternion_order_is_robosuites() -> None:
    """robosuite's eef quaternion is xyzw: its own conversion agrees with ours."""
    transform_utils = pytest.importorskip("robosuite.utils.transform_utils")
    for rotvec in ([0.3, -0.2, 1.1], [math.pi, 0, 0], [0, 0.7, 0]):
        matrix = Rotation.from_rotvec(rotvec).as_matrix()
        theirs = np.asarray(transform_utils.mat2quat(matrix), np.float64)  # float32 inside
        assert same_rotation(theirs, rotvec_to_quat(rotvec), tol=1e-6)


def test_a_known_base_pose_maps_points_and_orientations_into_the_world() -> None:
    # base 1 m along world x, 2 m along y, turned 90 degrees about z
    frame = BaseFrame([1.0, 2.0, 0.0], [0, 0, S, S])
    pos, rot = frame.ur_pose_to_world([1.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(pos, [1.0, 3.0, 0.5], atol=1e-12)  # base x is world y
    assert same_rotation(rot.as_quat(), np.array([0, 0, S, S]))
    pose = frame.world_to_ur_pose(np.array([1.0, 3.0, 0.5]), rot)
    np.testing.assert_allclose(pose, [1.0, 0.0, 0.5, 0.0, 0.0, 0.0], atol=1e-12)


def test_base_world_round_trips_of_random_poses() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        frame = BaseFrame(rng.normal(size=3), Rotation.random(random_state=rng).as_quat())
        pose = [*rng.normal(size=3), *Rotation.random(random_state=rng).as_rotvec()]
        back = frame.world_to_ur_pose(*frame.ur_pose_to_world(pose))
        np.testing.assert_allclose(back[:3], pose[:3], atol=1e-9)
        relative = Rotation.from_rotvec(back[3:]) * Rotation.from_rotvec(pose[3:]).inv()
        assert relative.magnitude() < 1e-9


def test_observed_quaternions_keep_their_sign_between_frames() -> None:
    q = rotvec_to_quat([math.pi - 0.01, 0, 0])
    assert np.array_equal(continuous_quat(-q, q), q)
    assert np.array_equal(continuous_quat(q, None), q)


def test_the_defaults_are_a_valid_config() -> None:
    cfg = URConfig()
    assert cfg.limits.max_speed == 0.25 and cfg.gripper.kind == "robotiq"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ur.toml"
    path.write_text(text)
    return path


def test_a_full_config_file_loads(tmp_path: Path) -> None:
    cfg = load_ur_config(
        write(
            tmp_path,
            """
[robot]
control_hz = 10
gain = 500
[limits]
workspace_min = [-0.3, -0.5, 0.1]
workspace_max = [0.3, -0.1, 0.4]
max_speed = 0.1
[gripper]
kind = "none"
""",
        )
    )
    assert cfg.robot.control_hz == 10.0 and cfg.robot.gain == 500.0
    assert cfg.limits.workspace_max == [0.3, -0.1, 0.4] and cfg.gripper.kind == "none"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_speed = nan", "[limits] max_speed: expected a finite number"),
        ("[limits]\nmax_speed = -0.1", "[limits] max_speed"),
        ("[limits]\nmax_speed = 0", "[limits] max_speed"),
        ("[limits]\nmax_speed = inf", "[limits] max_speed"),
        ("[limits]\nmax_speed = '0.1'", "[limits] max_speed: expected a number"),
        ("[limits]\nworkspace_min = [0, 0]", "[limits] workspace_min: expected a list of 3"),
        ("[limits]\nworkspace_min = [0, 0, nan]", "[limits] workspace_min"),
        ("[limits]\nworkspace_min = [0, 0, 0.6]", "workspace_min must be below workspace_max"),
        ("[limits]\nmax_sped = 0.1", "[limits] unknown key 'max_sped'"),
        ("[limit]\nmax_speed = 0.1", "unknown section [limit]"),
        ("[robot]\nlookahead_time = 0.5", "[robot] lookahead_time"),
        ("[robot]\ngain = 50", "[robot] gain"),
        ("[robot]\nservo_hz = 10\ncontrol_hz = 20", "servo_hz (10.0) must be >= control_hz"),
        ("[robot]\nwatchdog_hz = 100", "watchdog_hz (100.0) must be at most half"),
        ("[frame]\nbase_quat_xyzw = [0, 0, 0, 2]", "[frame] base_quat_xyzw: expected a unit"),
        ("[gripper]\nkind = 'hand'", "[gripper] kind: expected one of"),
        ("[gripper]\nport = 1.5", "[gripper] port: expected an integer"),
        ("[robot\n", "not valid TOML"),
    ],
)
def test_a_bad_value_refuses_to_start_naming_its_key(tmp_path: Path, text: str, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_ur_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_ur_config(tmp_path / "missing.toml")
