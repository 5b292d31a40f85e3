"""Robot implementations; :func:`make_robot` builds one from a ``--robot`` string."""

from __future__ import annotations

from typing import Any

from ebt_policy.deploy.robot import Robot
from ebt_policy.errors import ConfigError

__all__ = ["make_robot"]


def make_robot(target: str, **kwargs: Any) -> Robot:
    """``sim:<task>`` -> a :class:`~ebt_policy.deploy.robots.sim.SimRobot` of that task;
    ``tcp://HOST:PORT`` -> a :class:`~ebt_policy.deploy.bridge.RemoteRobot` served there;
    ``ur-rtde://HOST`` -> a Universal Robots arm (``config=`` its TOML file); ``ur-fake://``
    -> the same adapter on a fake controller (tests)."""
    kind, _, rest = target.partition(":")
    if kind == "sim" and rest:
        from ebt_policy.deploy.robots.sim import SimRobot

        return SimRobot(rest, **kwargs)
    if kind == "tcp" and rest.startswith("//"):
        from ebt_policy.deploy.bridge import RemoteRobot

        return RemoteRobot(target, **kwargs)
    if kind in ("ur-rtde", "ur-fake") and rest.startswith("//"):
        from ebt_policy.deploy.robots.ur import make_ur_robot

        return make_ur_robot(target, **kwargs)
    raise ConfigError(
        f"--robot {target!r}: expected sim:<task> (e.g. sim:twogoal), tcp://HOST:PORT, "
        "ur-rtde://HOST or ur-fake://"
    )
