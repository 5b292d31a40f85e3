"""The robot interface and the real-time simulated robot (twogoal, sped up to 100-200 Hz)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ebt_policy.deploy.robot import Robot, RobotSpec
from ebt_policy.deploy.robots import make_robot
from ebt_policy.deploy.robots.sim import SimRobot
from ebt_policy.deploy.timing import Rate, sleep_until
from ebt_policy.errors import ConfigError


def _wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_sim_robot_steps_on_its_own_thread_in_real_time() -> None:
    with SimRobot("twogoal", control_hz=200) as robot:
        first = robot.observation()
        assert set(robot.spec.obs_keys) <= set(first)
        assert _wait_for(lambda: robot.observation()["seq"] >= first["seq"] + 10)
        later = robot.observation()
        assert later["timestamp"] > first["timestamp"]
        assert robot.held_ticks > 0  # no action sent: the robot held its stop action


def test_sim_robot_applies_sent_actions_and_holds_the_last_one() -> None:
    with SimRobot("twogoal", control_hz=200) as robot:
        x0 = robot.observation()["agent_pos"].copy()
        robot.send(np.array([1.0, 0.0]))  # due now
        assert _wait_for(lambda: robot.observation()["agent_pos"][0] > x0[0] + 0.02)
        held = robot.held_ticks
        assert _wait_for(lambda: robot.held_ticks > held + 3)  # nothing new: the last one holds
        assert robot.observation()["agent_vel"][0] > 0  # still moving: the action is held


def test_sim_robot_waits_for_an_actions_due_time() -> None:
    with SimRobot("twogoal", control_hz=200) as robot:
        x0 = robot.observation()["agent_pos"].copy()
        robot.send(np.array([1.0, 0.0]), at_time=time.monotonic() + 0.3)
        time.sleep(0.1)
        assert abs(robot.observation()["agent_pos"][0] - x0[0]) < 1e-3
        assert _wait_for(lambda: robot.observation()["agent_pos"][0] > x0[0] + 0.01)


def test_sim_robot_stop_holds_still_and_ignores_actions_until_the_next_episode() -> None:
    with SimRobot("twogoal", control_hz=200) as robot:
        robot.send(np.array([1.0, 1.0]))
        robot.stop()
        robot.send(np.array([1.0, 1.0]))
        assert robot.ignored_sends == 1
        np.testing.assert_array_equal(robot._applied, [0.0, 0.0])  # delta action: zero = stay
        robot.start_episode(seed=3)
        robot.send(np.array([1.0, 1.0]))
        assert robot.ignored_sends == 1


def test_sim_robot_injected_latency_ages_every_observation() -> None:
    with SimRobot("twogoal", control_hz=200, obs_latency_s=0.05) as robot:
        time.sleep(0.15)
        obs = robot.observation()
        assert time.monotonic() - obs["timestamp"] >= 0.05


def test_sim_robot_dropped_frames_leave_gaps_in_the_sequence() -> None:
    with SimRobot("twogoal", control_hz=200, drop_prob=0.5, seed=1) as robot:
        seen = set()
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            seen.add(robot.observation()["seq"])
            time.sleep(0.001)
        assert len(seen) >= 5
        assert max(seen) - min(seen) + 1 > len(seen)  # some numbers were never published


class _FakeRobot(Robot):
    def __init__(self) -> None:
        self.spec = RobotSpec("fake", 1, (-1.0,), (1.0,), 10.0, ("x",))
        self.calls: list[str] = []

    def connect(self) -> None:
        self.calls.append("connect")

    def observation(self):
        return {"x": np.zeros(1), "timestamp": 0.0, "seq": 0}

    def send(self, action, at_time=None) -> None:
        self.calls.append("send")

    def stop(self) -> None:
        self.calls.append("stop")

    def disconnect(self) -> None:
        self.calls.append("disconnect")


def test_a_with_block_stops_and_disconnects_even_when_it_raises() -> None:
    robot = _FakeRobot()
    with pytest.raises(RuntimeError), robot:
        raise RuntimeError("boom")
    assert robot.calls == ["connect", "stop", "disconnect"]


def test_stop_action_is_zero_for_delta_and_the_last_target_for_absolute() -> None:
    spec = RobotSpec("a", 2, (0.0, 0.0), (2.0, 4.0), 10.0, ("x",))
    np.testing.assert_array_equal(spec.stop_action(None), [1.0, 2.0])
    np.testing.assert_array_equal(spec.stop_action(np.array([0.5, 0.5])), [0.5, 0.5])
    delta = RobotSpec("d", 2, (-1.0, 0.5), (1.0, 1.0), 10.0, ("x",), action_kind="delta")
    np.testing.assert_array_equal(delta.stop_action(np.ones(2)), [0.0, 0.5])


def test_make_robot_rejects_an_unknown_robot_string() -> None:
    with pytest.raises(ConfigError, match="sim:<task>"):
        make_robot("ur5")
    with pytest.raises(ConfigError, match="control_hz"):
        SimRobot("twogoal", control_hz=-1)


def test_rate_keeps_absolute_deadlines() -> None:
    rate = Rate(200)
    ticks, woke = [], []
    for _ in range(10):
        ticks.append(rate.sleep())
        woke.append(time.monotonic())
    assert np.allclose(np.diff(ticks), 1 / 200) or rate.overruns  # a loaded machine may overrun
    assert all(w >= t for w, t in zip(woke, ticks, strict=True))  # never wakes before a deadline
    sleep_until(time.monotonic() - 1)  # a past deadline returns at once
