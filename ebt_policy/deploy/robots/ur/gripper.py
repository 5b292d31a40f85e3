"""Grippers behind a small interface; the default talks to a Robotiq gripper through the UR.

The Robotiq URCap runs a server on the UR controller (port 63352) that speaks a line-based ASCII
protocol: ``SET <VAR> <value>`` answered ``ack``, ``GET <VAR>`` answered ``<VAR> <value>``, with
``ACT`` (activate), ``GTO`` (go to the requested position), ``POS`` (position, 0 open .. 255
closed), ``SPE`` (speed), ``FOR`` (force) and ``STA`` (status, 3 = activated). Any other gripper
implements :class:`Gripper` (four methods) and is passed to the UR robot.
"""

from __future__ import annotations

import abc
import socket
import time

from ebt_policy.errors import EbtPolicyError

__all__ = ["Gripper", "GripperError", "NoGripper", "RobotiqGripper"]


class GripperError(EbtPolicyError, RuntimeError):
    """The gripper did not answer, or answered something unexpected."""


class Gripper(abc.ABC):
    """A parallel gripper commanded by a closure in [0, 1] (0 open, 1 closed)."""

    stroke: float = 0.0  # m, opening when fully open

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection and activate the gripper (blocking until it is ready)."""

    @abc.abstractmethod
    def command(self, closure: float) -> None:
        """Start moving to ``closure`` (0 open .. 1 closed); does not wait for the motion."""

    @abc.abstractmethod
    def opening(self) -> float:
        """The measured opening between the fingers, m."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Close the connection (the gripper stays where it is). Safe to call twice."""


class NoGripper(Gripper):
    """An arm without a gripper: commands are ignored, the opening reads 0."""

    def connect(self) -> None:
        pass

    def command(self, closure: float) -> None:
        pass

    def opening(self) -> float:
        return 0.0

    def disconnect(self) -> None:
        pass


class RobotiqGripper(Gripper):
    """A Robotiq 2F / Hand-E gripper through the URCap's socket on the UR controller.

    Args:
        host: the UR controller's address.
        port: the URCap's server port (63352).
        speed, force: 0..255, sent once at connect.
        stroke: opening at position 0, m (0.085 for a 2F-85).
        timeout_s: socket timeout of every request, and of activation.
    """

    def __init__(
        self,
        host: str,
        port: int = 63352,
        speed: int = 255,
        force: int = 100,
        stroke: float = 0.085,
        timeout_s: float = 2.0,
    ) -> None:
        self.host, self.port = host, int(port)
        self.speed, self.force, self.stroke = int(speed), int(force), float(stroke)
        self.timeout_s = float(timeout_s)
        self._sock: socket.socket | None = None
        self._buf = b""
        self._last_pos: int | None = None

    def _request(self, line: str) -> str:
        if self._sock is None:
            raise GripperError(f"gripper at {self.host}:{self.port}: not connected")
        try:
            self._sock.sendall(line.encode("ascii") + b"\n")
            while b"\n" not in self._buf:
                chunk = self._sock.recv(1024)
                if not chunk:
                    raise GripperError(f"gripper at {self.host}:{self.port}: connection closed")
                self._buf += chunk
        except OSError as exc:
            raise GripperError(f"gripper at {self.host}:{self.port}: {exc}") from None
        reply, _, self._buf = self._buf.partition(b"\n")
        return reply.decode("ascii", "replace").strip()

    def _set(self, var: str, value: int) -> None:
        reply = self._request(f"SET {var} {int(value)}")
        if reply != "ack":
            raise GripperError(f"gripper: SET {var} {value} answered {reply!r}, expected 'ack'")

    def _get(self, var: str) -> int:
        reply = self._request(f"GET {var}")
        name, _, value = reply.partition(" ")
        if name != var or not value.strip().lstrip("-").isdigit():
            raise GripperError(f"gripper: GET {var} answered {reply!r}, expected '{var} <int>'")
        return int(value)

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            self._sock = socket.create_connection((self.host, self.port), self.timeout_s)
        except OSError as exc:
            raise GripperError(
                f"gripper at {self.host}:{self.port}: cannot connect ({exc}); "
                "is the Robotiq URCap installed, or set [gripper] kind = "
                '"none"'
            ) from None
        if self._get("STA") != 3:
            self._set("ACT", 1)
            deadline = time.monotonic() + max(self.timeout_s, 5.0)
            while self._get("STA") != 3:
                if time.monotonic() > deadline:
                    raise GripperError(
                        f"gripper at {self.host}:{self.port}: not activated within 5 s"
                    )
                time.sleep(0.05)
        self._set("SPE", self.speed)
        self._set("FOR", self.force)
        self._set("GTO", 1)

    def command(self, closure: float) -> None:
        pos = int(round(min(max(float(closure), 0.0), 1.0) * 255))
        if pos != self._last_pos:  # one request per change, not per control tick
            self._set("POS", pos)
            self._last_pos = pos

    def opening(self) -> float:
        return self.stroke * (1.0 - self._get("POS") / 255.0)

    def disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
