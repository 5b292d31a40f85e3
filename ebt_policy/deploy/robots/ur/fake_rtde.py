"""Look-alikes of ``ur_rtde``'s ``RTDEControlInterface`` / ``RTDEReceiveInterface`` over a
:class:`~ebt_policy.deploy.robots.ur.fake.FakeURController`.

They have ``ur_rtde``'s method names and signatures (those the adapter uses, plus a few for tests)
and talk to a controller registered under their hostname (:func:`register_fake`), or to one
served by another process (``host:port``, see :mod:`ebt_policy.deploy.robots.ur.fake_server`),
so a test can kill the process that drives the arm and watch the arm stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebt_policy.deploy.robots.ur.fake import SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP, FakeURController

__all__ = ["FakeRTDEControlInterface", "FakeRTDEReceiveInterface", "get_fake", "register_fake"]

_REGISTRY: dict[str, FakeURController] = {}


def register_fake(hostname: str, controller: FakeURController) -> None:
    """Make ``controller`` the arm the fake interfaces reach at ``hostname``."""
    _REGISTRY[hostname] = controller


def get_fake(hostname: str) -> Any:
    """The controller registered at ``hostname``, or a proxy to one served at ``host:port``."""
    if hostname in _REGISTRY:
        return _REGISTRY[hostname]
    if ":" in hostname:
        from ebt_policy.deploy.robots.ur.fake_server import RemoteFakeController

        return RemoteFakeController(hostname)
    raise RuntimeError(f"no fake UR controller at {hostname!r} (register_fake or host:port)")


class FakeRTDEControlInterface:
    """``rtde_control.RTDEControlInterface`` over a fake controller (same names, signatures)."""

    def __init__(
        self,
        hostname: str,
        frequency: float = -1.0,
        flags: int = 1,
        ur_cap_port: int = 50002,
        rt_priority: int = 0,
    ) -> None:
        self._ctl = get_fake(hostname)
        self._connected = True
        if not self._ctl.upload_script():  # ur_rtde raises when the script cannot start
            raise RuntimeError("RTDE control script could not start (protective stop?)")

    def servoL(  # noqa: N802 (ur_rtde's names)
        self,
        pose: Sequence[float],
        speed: float,
        acceleration: float,
        time: float,
        lookahead_time: float,
        gain: float,
    ) -> bool:
        return bool(self._ctl.submit("servoL", [float(v) for v in pose], float(lookahead_time)))

    def servoStop(self, a: float = 10.0) -> bool:  # noqa: N802
        return bool(self._ctl.submit("servoStop", float(a)))

    def stopL(self, a: float = 10.0, asynchronous: bool = False) -> None:  # noqa: N802
        self._ctl.submit("stopL", float(a))

    def speedStop(self, a: float = 10.0) -> bool:  # noqa: N802
        return bool(self._ctl.submit("speedStop", float(a)))

    def setWatchdog(self, min_frequency: float = 10.0) -> bool:  # noqa: N802
        return bool(self._ctl.set_watchdog(float(min_frequency)))

    def kickWatchdog(self) -> bool:  # noqa: N802
        return bool(self._ctl.kick_watchdog())

    def isProgramRunning(self) -> bool:  # noqa: N802
        return bool(self._ctl.state()["program_running"])

    def getRobotStatus(self) -> int:  # noqa: N802
        return 1 | (2 if self.isProgramRunning() else 0)  # bit 0 power on, bit 1 running

    def triggerProtectiveStop(self) -> bool:  # noqa: N802
        return bool(self._ctl.trigger_protective_stop())

    def reuploadScript(self) -> bool:  # noqa: N802
        return bool(self._ctl.upload_script())

    def stopScript(self) -> None:  # noqa: N802
        self._ctl.stop_script()

    def isConnected(self) -> bool:  # noqa: N802
        return self._connected

    def disconnect(self) -> None:
        self._connected = False


class FakeRTDEReceiveInterface:
    """``rtde_receive.RTDEReceiveInterface`` over a fake controller (same names, signatures)."""

    def __init__(
        self,
        hostname: str,
        frequency: float = -1.0,
        variables: Sequence[str] = (),
        verbose: bool = False,
        use_upper_range_registers: bool = False,
        rt_priority: int = 0,
    ) -> None:
        self._ctl = get_fake(hostname)
        self._connected = True

    def getActualTCPPose(self) -> list[float]:  # noqa: N802
        return list(self._ctl.state()["pose"])

    def getActualTCPSpeed(self) -> list[float]:  # noqa: N802
        return list(self._ctl.state()["speed"])

    def getActualTCPForce(self) -> list[float]:  # noqa: N802
        return list(self._ctl.state()["force"])

    def getActualQ(self) -> list[float]:  # noqa: N802
        return list(self._ctl.joints())

    def isProtectiveStopped(self) -> bool:  # noqa: N802
        return bool(self._ctl.state()["protective_stop"])

    def isEmergencyStopped(self) -> bool:  # noqa: N802
        return False

    def getSafetyMode(self) -> int:  # noqa: N802
        return SAFETY_PROTECTIVE_STOP if self.isProtectiveStopped() else SAFETY_NORMAL

    def getRobotStatus(self) -> int:  # noqa: N802
        return 1 | (2 if self._ctl.state()["program_running"] else 0)

    def getTimestamp(self) -> float:  # noqa: N802
        return float(self._ctl.state()["t"])

    def isConnected(self) -> bool:  # noqa: N802
        return self._connected

    def disconnect(self) -> None:
        self._connected = False
