"""The fake UR controller behaves like the arm where our safety relies on it: it follows servoL
set-points, stops on servoStop, protective-stops outside its safety box, over its speed limit and
when pressing too hard, stops when the RTDE watchdog is not kicked, and delays / drops commands
as configured. Stepped on a manual clock (deterministic, faster than real time). Also the Robotiq
client against a fake URCap server speaking the same ASCII protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ebt_policy.deploy.robots.ur.fake import FakeURController, FakeURSettings
from ebt_policy.deploy.robots.ur.fake_gripper import FakeRobotiqServer
from ebt_policy.deploy.robots.ur.fake_rtde import (
    FakeRTDEControlInterface,
    FakeRTDEReceiveInterface,
    register_fake,
)
from ebt_policy.deploy.robots.ur.gripper import GripperError, RobotiqGripper

DOWN = [math.pi, 0.0, 0.0]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def arm(name: str, **settings) -> tuple[Clock, FakeURController, object, object]:
    clock = Clock()
    ctl = FakeURController(FakeURSettings(**settings), clock=clock)
    register_fake(name, ctl)
    return clock, ctl, FakeRTDEControlInterface(name, 500.0), FakeRTDEReceiveInterface(name)


def run(clock: Clock, ctl: FakeURController, seconds: float, kick=None) -> None:
    """Advance the arm; ``kick`` (a control interface) is kicked every 2 ms when given."""
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        clock.t += 0.002
        if kick is not None:
            kick.kickWatchdog()
        ctl.advance_to(clock.t)


def test_servo_set_points_are_followed_and_servo_stop_brings_the_arm_to_rest() -> None:
    clock, ctl, c, r = arm("follow")
    target = [0.01, -0.4, 0.3, *DOWN]
    assert c.servoL(target, 0.0, 0.0, 0.008, 0.05, 300.0)
    run(clock, ctl, 0.5)
    np.testing.assert_allclose(r.getActualTCPPose()[:3], target[:3], atol=1e-5)
    c.servoL([0.09, -0.4, 0.3, *DOWN], 0.0, 0.0, 0.008, 0.1, 300.0)  # 0.8 m/s to start with
    run(clock, ctl, 0.02)
    assert np.linalg.norm(r.getActualTCPSpeed()[:3]) > 0.3
    assert c.servoStop(5.0)
    run(clock, ctl, 0.5)
    assert np.linalg.norm(r.getActualTCPSpeed()[:3]) == 0.0
    assert ctl.status()["mode"] == "idle" and "servoStop" in [e for _, e in ctl.events]
    assert r.getSafetyMode() == 1 and c.isProgramRunning()


def test_the_watchdog_stops_the_arm_when_it_is_not_kicked_in_time() -> None:
    clock, ctl, c, r = arm("watchdog")
    assert c.setWatchdog(10.0)  # at least every 0.1 s
    run(clock, ctl, 0.5, kick=c)
    assert c.isProgramRunning()
    c.servoL([0.15, -0.4, 0.3, *DOWN], 0.0, 0.0, 0.008, 0.2, 300.0)  # 0.75 m/s, slowing
    run(clock, ctl, 0.05, kick=c)
    kicked_last = clock.t
    run(clock, ctl, 0.09)  # silent, inside the watchdog time
    assert c.isProgramRunning() and np.linalg.norm(r.getActualTCPSpeed()[:3]) > 0
    run(clock, ctl, 0.3)
    assert not c.isProgramRunning()
    assert np.linalg.norm(r.getActualTCPSpeed()[:3]) == 0.0
    (t_fired,) = [t for t, e in ctl.events if e == "watchdog"]
    assert 0.1 <= t_fired - kicked_last <= 0.1 + 0.004
    assert not c.servoL([0.3, -0.4, 0.3, *DOWN], 0.0, 0.0, 0.008, 0.1, 300.0)  # refused


@pytest.mark.parametrize(
    ("start_z", "target", "lookahead", "why"),
    [
        (0.85, [0.0, -0.4, 0.95], 0.2, "left the safety box"),  # above the 0.9 m box, slowly
        (0.3, [0.5, -0.4, 0.3], 0.1, "over the limit 1.0"),  # 5 m/s to follow
        (0.05, [0.0, -0.4, -0.04], 0.2, "force"),  # 4 cm into the table: 200 N, slowly
    ],
)
def test_protective_stops_halt_the_arm_and_hold_until_unlocked(
    start_z, target, lookahead, why
) -> None:
    clock, ctl, c, r = arm(f"pstop-{why}", start_pose=(0.0, -0.4, start_z, *DOWN))
    c.servoL([*target, *DOWN], 0.0, 0.0, 0.008, lookahead, 300.0)
    run(clock, ctl, 3.0)
    assert r.isProtectiveStopped() and r.getSafetyMode() == 3
    assert why in ctl.protective_stop
    assert np.linalg.norm(r.getActualTCPSpeed()) == 0.0 and not c.isProgramRunning()
    assert not c.servoL([*target, *DOWN], 0.0, 0.0, 0.008, lookahead, 300.0)
    assert not c.reuploadScript()  # the teach pendant must clear it first
    ctl.unlock_protective_stop()
    assert c.reuploadScript() and c.isProgramRunning()


def test_commands_arrive_after_the_latency_and_dropped_set_points_never_do() -> None:
    clock, ctl, c, r = arm("latency", latency_s=0.05)
    c.servoL([0.05, -0.4, 0.3, *DOWN], 0.0, 0.0, 0.008, 0.05, 300.0)
    run(clock, ctl, 0.048)
    assert ctl.status()["mode"] == "idle"
    run(clock, ctl, 0.01)
    assert ctl.status()["mode"] == "servo"
    run(clock, ctl, 0.04)  # moving now, but what is read back is 50 ms old
    assert r.getActualTCPPose()[0] < ctl.status()["pose"][0]

    clock, ctl, c, r = arm("drops", drop_prob=1.0)
    for _ in range(10):
        assert c.servoL([0.05, -0.4, 0.3, *DOWN], 0.0, 0.0, 0.008, 0.05, 300.0)
    run(clock, ctl, 0.2)
    assert ctl.status()["dropped"] == 10 and ctl.status()["servo_count"] == 0
    assert r.getActualTCPPose()[0] == 0.0


def test_the_robotiq_client_activates_moves_and_reads_the_gripper() -> None:
    import time

    server = FakeRobotiqServer(rate=5000.0)
    try:
        gripper = RobotiqGripper("127.0.0.1", server.port, speed=200, force=50, stroke=0.085)
        gripper.connect()
        assert server.requests[:2] == ["GET STA", "SET ACT 1"]
        assert {"SET SPE 200", "SET FOR 50", "SET GTO 1"} <= set(server.requests)
        assert gripper.opening() == pytest.approx(0.085)
        gripper.command(1.0)
        gripper.command(1.0)  # unchanged: not sent again
        assert server.requests.count("SET POS 255") == 1
        deadline = time.monotonic() + 2
        while gripper.opening() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gripper.opening() == 0.0
        gripper.command(0.5)
        assert "SET POS 128" in server.requests
        with pytest.raises(GripperError, match="answered '\\?'"):
            gripper._get("XYZ")
        gripper.disconnect()
    finally:
        server.close()


def test_an_unreachable_gripper_is_named(unused_port: int) -> None:
    with pytest.raises(GripperError, match=f"127.0.0.1:{unused_port}: cannot connect"):
        RobotiqGripper("127.0.0.1", unused_port, timeout_s=0.5).connect()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_fakes_methods_exist_in_ur_rtde_with_the_same_parameters() -> None:
    """Checked against the installed ur_rtde (skipped without it): every public method of the
    fakes exists on the real interface and takes as many positional parameters."""
    import inspect
    import re

    rtde_control = pytest.importorskip("rtde_control")
    rtde_receive = pytest.importorskip("rtde_receive")
    pairs = [
        (FakeRTDEControlInterface, rtde_control.RTDEControlInterface),
        (FakeRTDEReceiveInterface, rtde_receive.RTDEReceiveInterface),
    ]
    for fake, real in pairs:
        for name, method in inspect.getmembers(fake, inspect.isfunction):
            if name.startswith("_") and name != "__init__":
                continue
            assert hasattr(real, name), f"{real.__name__} has no {name}"
            # pybind11 puts the signature on the docstring's first line: name(self: ..., a: ...)
            first = getattr(real, name).__doc__.splitlines()[0]
            n_real = len(re.findall(r"(?:\(|, )\w+: ", first))
            n_fake = len(inspect.signature(method).parameters)
            assert n_real == n_fake, f"{name}: ur_rtde {first!r}, fake {n_fake} parameters"
