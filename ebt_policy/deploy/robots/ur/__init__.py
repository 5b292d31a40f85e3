"""Universal Robots arms through ``ur_rtde`` (the ``ur`` extra), and a fake controller for tests.

``make_ur_robot("ur-rtde://192.168.1.10", config="ur.toml")`` builds a
:class:`~ebt_policy.deploy.robots.ur.robot.URRobot`; ``ur-fake://`` one driving an in-process
:class:`~ebt_policy.deploy.robots.ur.fake.FakeURController` (with a fake Robotiq gripper), and
``ur-fake://HOST:PORT`` one driving a fake served by another process. ``ur_rtde`` is imported
only when a real arm is connected.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ebt_policy.deploy.robots.ur.config import URConfig, load_ur_config
from ebt_policy.deploy.robots.ur.gripper import Gripper, NoGripper, RobotiqGripper
from ebt_policy.deploy.robots.ur.robot import URError, URRobot, fake_interfaces
from ebt_policy.errors import ConfigError

__all__ = [
    "Gripper",
    "NoGripper",
    "RobotiqGripper",
    "URConfig",
    "URError",
    "FakeURRobot",
    "URRobot",
    "load_ur_config",
    "make_ur_robot",
]

_fake_ids = itertools.count()


def _gripper(cfg: URConfig, host: str) -> Gripper:
    g = cfg.gripper
    if g.kind == "none":
        return NoGripper()
    return RobotiqGripper(host, g.port, g.speed, g.force, g.stroke)


class FakeURRobot(URRobot):
    """A :class:`URRobot` that owns its in-process fake arm (``fake``) and gripper server: the
    arm's 500 Hz thread runs while the robot is connected; its state stays readable after."""

    def __init__(self, fake: Any, fake_gripper: Any, *args: Any) -> None:
        super().__init__(*args)
        self.fake, self.fake_gripper = fake, fake_gripper

    def connect(self) -> None:
        self.fake.start()
        super().connect()

    def disconnect(self) -> None:
        super().disconnect()
        self.fake.shutdown()


def make_ur_robot(
    target: str, config: str | Path | URConfig | None = None, fake_settings: Any = None
) -> URRobot:
    """A UR robot from ``ur-rtde://HOST``, ``ur-fake://`` or ``ur-fake://HOST:PORT``.

    ``config``: a TOML file (or a built config; None: the defaults). ``fake_settings``: a
    :class:`~ebt_policy.deploy.robots.ur.fake.FakeURSettings` for an in-process fake.
    """
    cfg = config if isinstance(config, URConfig) else load_ur_config(config)
    kind, _, rest = target.partition("://")
    host = rest.strip("/")
    if kind == "ur-rtde":
        if not host:
            raise ConfigError(f"--robot {target!r}: expected ur-rtde://HOST (the arm's address)")
        return URRobot(host, cfg, gripper=_gripper(cfg, host))
    if kind == "ur-fake" and host:  # a fake served by another process (tests)
        robot = URRobot(
            host, cfg, fake_interfaces, _gripper(cfg, host.rsplit(":", 1)[0]), name=target
        )
        return robot
    if kind == "ur-fake":
        from ebt_policy.deploy.robots.ur.fake import FakeURController
        from ebt_policy.deploy.robots.ur.fake_gripper import FakeRobotiqServer
        from ebt_policy.deploy.robots.ur.fake_rtde import register_fake

        controller = FakeURController(fake_settings)
        name = f"fake-{next(_fake_ids)}"
        register_fake(name, controller)
        gripper: Gripper = NoGripper()
        server = None
        if cfg.gripper.kind == "robotiq":
            server = FakeRobotiqServer()
            gripper = RobotiqGripper(
                "127.0.0.1", server.port, cfg.gripper.speed, cfg.gripper.force, cfg.gripper.stroke
            )
        return FakeURRobot(controller, server, name, cfg, fake_interfaces, gripper, "ur-fake://")
    raise ConfigError(f"--robot {target!r}: expected ur-rtde://HOST or ur-fake://[HOST:PORT]")
