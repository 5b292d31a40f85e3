"""A process / network bridge for robots: :class:`RobotServer` exposes a robot over zmq, and
:class:`RemoteRobot` drives it from another process or machine (pyzmq + msgpack; no pickle)."""

from ebt_policy.deploy.bridge.client import RemoteRobot, RobotConnectionError
from ebt_policy.deploy.bridge.server import RobotServer, check_bind

__all__ = ["RemoteRobot", "RobotConnectionError", "RobotServer", "check_bind"]
