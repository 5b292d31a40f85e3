""":class:`RemoteRobot`: a :class:`~ebt_policy.deploy.robot.Robot` served by ``ebt-policy
robot-server`` in another process or on a controller PC.

Each call is one request and its reply (a DEALER socket; replies are matched to requests by
``ack``, so a late reply to an abandoned request is discarded). A background thread sends a
heartbeat whenever the loop has been quiet for ``heartbeat_s`` (during the warm-up plan, between
episodes), so the server only stops the robot when this process is really gone or stuck.
Timestamps cross clocks: every reply carries the server's monotonic time, and the offset
estimated from the fastest round trip converts observation timestamps to this process's clock
and action due times to the server's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from typing import Any

import numpy as np
import zmq

from ebt_policy.deploy.bridge.protocol import MAX_BYTES, ProtocolError, decode, encode
from ebt_policy.deploy.robot import Observation, Robot, RobotSpec
from ebt_policy.errors import EbtPolicyError

__all__ = ["RemoteRobot", "RobotConnectionError"]

TOKEN_ENV = "EBT_ROBOT_TOKEN"


class RobotConnectionError(EbtPolicyError, ConnectionError):
    """The robot server did not answer in time or refused a request."""


class RemoteRobot(Robot):
    """The robot served at ``address`` (``tcp://HOST:PORT``).

    Args:
        address: where ``ebt-policy robot-server`` listens.
        token: the server's shared secret (default: the ``EBT_ROBOT_TOKEN`` environment variable).
        timeout_s: a request without a reply after this long raises RobotConnectionError.
        heartbeat_s: send a heartbeat when no request went out for this long.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        timeout_s: float = 1.0,
        heartbeat_s: float = 0.1,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.address = address
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout_s, self.heartbeat_s, self.max_bytes = timeout_s, heartbeat_s, max_bytes
        self._lock = threading.Lock()  # one request at a time (zmq sockets are not thread-safe)
        self._seq = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self._last_sent = 0.0
        self._offset = 0.0  # server clock - local clock
        self._best_rtt = float("inf")
        self._quit = threading.Event()
        self._beat: threading.Thread | None = None
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ Robot
    def connect(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        self._sock = sock
        reply = self._request("hello")
        spec = dict(reply["spec"])
        for key in ("action_low", "action_high", "obs_keys"):
            spec[key] = tuple(spec[key])
        self.spec = RobotSpec(**spec)
        self.metadata = reply.get("metadata", {})
        self._quit.clear()
        self._beat = threading.Thread(target=self._heartbeats, name="robot-heartbeat", daemon=True)
        self._beat.start()

    def observation(self) -> Observation:
        obs = self._request("observation")["obs"]
        obs["timestamp"] = float(obs["timestamp"]) - self._offset  # to this process's clock
        return obs

    def send(self, action: np.ndarray, at_time: float | None = None) -> None:
        at = None if at_time is None else float(at_time) + self._offset  # to the server's clock
        self._request("send", {"action": np.asarray(action, np.float64), "at_time": at})

    def stop(self) -> None:
        if self._sock is not None:
            self._request("stop")

    def start_episode(self, seed: int | None = None) -> None:
        self._request("start_episode", {"seed": seed})

    def disconnect(self) -> None:
        self._quit.set()
        if self._beat is not None:
            self._beat.join(timeout=1.0)
            self._beat = None
        if self._sock is not None:
            with contextlib.suppress(RobotConnectionError):  # a server already gone: fine
                self._request("bye")
            self._sock.close()
            self._sock = None

    def dataset_metadata(self) -> dict[str, Any]:
        return dict(self.metadata) or super().dataset_metadata()

    # ------------------------------------------------------------------ internals
    def _heartbeats(self) -> None:
        while not self._quit.wait(self.heartbeat_s / 2):
            if time.monotonic() - self._last_sent >= self.heartbeat_s:
                try:
                    self._request("heartbeat")
                except RobotConnectionError:
                    return  # the loop's next request reports it

    def _request(self, kind: str, body: dict | None = None) -> dict[str, Any]:
        if self._sock is None:
            raise RobotConnectionError(f"{self.address}: not connected")
        with self._lock:
            seq = next(self._seq)
            extra = {"token": self.token} if self.token else {}
            t0 = time.monotonic()
            self._sock.send(encode(kind, seq, t0, body, **extra))
            self._last_sent = t0
            deadline = t0 + self.timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                    raise RobotConnectionError(
                        f"{self.address}: no reply to {kind!r} within {self.timeout_s} s"
                    )
                try:
                    msg = decode(self._sock.recv(), self.max_bytes)
                except ProtocolError as exc:
                    raise RobotConnectionError(f"{self.address}: bad reply ({exc})") from None
                if msg.get("ack") == seq:
                    break  # else: a late reply to an abandoned request
            t1 = time.monotonic()
        if t1 - t0 < self._best_rtt:  # the fastest round trip bounds the offset best
            self._best_rtt = t1 - t0
            self._offset = float(msg["t"]) - (t0 + t1) / 2
        if msg["type"] == "error":
            raise RobotConnectionError(
                f"{self.address}: {kind} refused: {msg['body'].get('error')}"
            )
        return msg["body"]
