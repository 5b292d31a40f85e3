"""Expose any :class:`~ebt_policy.deploy.robot.Robot` over a zmq socket (ROUTER, one client).

The server never trusts a message: anything malformed, oversized, of another protocol version,
with a wrong token, replayed or out of order gets an ``error`` reply and a log line, and the
server carries on. A client opens a session with ``hello`` (which returns the robot's spec);
while it holds the session, other clients are told the robot is busy. When the session's client
says nothing valid for ``client_timeout_s`` the robot is stopped safely and the session ends.
Binding beyond loopback needs ``allow_remote=True`` and a shared-secret token, checked on every
message, because whoever reaches the port can move the robot.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zmq

from ebt_policy.deploy.bridge.protocol import MAX_BYTES, REQUESTS, ProtocolError, decode, encode
from ebt_policy.deploy.robot import Robot
from ebt_policy.errors import ConfigError

__all__ = ["RobotServer", "check_bind"]

log = logging.getLogger("ebt_policy.deploy.bridge")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_bind(address: str, allow_remote: bool, token: str | None) -> None:
    """ConfigError unless ``address`` is ``tcp://HOST:PORT`` on loopback, or remote binding is
    explicitly allowed and a token is set."""
    url = urlparse(address)
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        raise ConfigError(
            f"--bind {address!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555)"
        )
    if url.hostname not in LOOPBACK:
        if not allow_remote:
            raise ConfigError(
                f"--bind {address}: not a loopback address; pass --allow-remote (and a token) "
                "to let other machines move this robot"
            )
        if not token:
            raise ConfigError(f"--bind {address}: a non-loopback bind needs a shared-secret token")


class RobotServer:
    """Serves ``robot`` (connected by :meth:`serve`) at ``bind``.

    Args:
        robot: the robot to expose.
        bind: ``tcp://HOST:PORT`` (loopback unless ``allow_remote``).
        token: shared secret every message must carry (required beyond loopback).
        client_timeout_s: stop the robot when the session's client is silent this long.
        max_bytes: size limit of one message.
        clock: the server machine's monotonic clock, the one the robot's timestamps use
            (replies carry it; a client on another machine converts between the two).
    """

    def __init__(
        self,
        robot: Robot,
        bind: str = "tcp://127.0.0.1:5555",
        token: str | None = None,
        allow_remote: bool = False,
        client_timeout_s: float = 0.5,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_bind(bind, allow_remote, token)
        self.clock = clock
        self.robot, self.bind, self.token = robot, bind, token
        self.client_timeout_s = float(client_timeout_s)
        self.max_bytes = int(max_bytes)
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.errors = 0  # rejected messages
        self.timeouts = 0  # sessions ended by a silent client
        self._session: bytes | None = None
        self._last_seq = -1
        self._last_heard = 0.0
        self._seq = 0

    def serve(self) -> None:
        """Connect the robot and answer requests until :attr:`stop_event` is set; the robot is
        stopped and disconnected on every exit."""
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # far beyond: zmq drops the peer
        try:
            with self.robot:
                sock.bind(self.bind)
                self.ready.set()
                while not self.stop_event.is_set():
                    if sock.poll(20):
                        frames = sock.recv_multipart()
                        if len(frames) == 2:
                            self._answer(sock, frames[0], frames[1])
                    self._check_client()
        finally:
            sock.close()

    # ------------------------------------------------------------------ internals
    def _check_client(self) -> None:
        silent = self.clock() - self._last_heard
        if self._session is not None and silent > self.client_timeout_s:
            log.warning("client silent for %.2f s: stopping the robot", silent)
            self.robot.stop()
            self.timeouts += 1
            self._session = None

    def _reply(self, sock: zmq.Socket, ident: bytes, kind: str, ack: int, body: dict) -> None:
        self._seq += 1
        sock.send_multipart([ident, encode(kind, self._seq, self.clock(), body, ack=ack)])

    def _answer(self, sock: zmq.Socket, ident: bytes, frame: bytes) -> None:
        ack = -1
        try:
            msg = decode(frame, self.max_bytes)
            ack = msg["seq"]
            body = self._handle(ident, msg)
            self._reply(sock, ident, "ok", ack, body)
        except ProtocolError as exc:
            self.errors += 1
            log.warning("rejected a message: %s", exc)
            self._reply(sock, ident, "error", ack, {"error": str(exc)})
        except Exception as exc:  # the robot raised: tell the client, keep serving
            self.errors += 1
            log.exception("request failed")
            self._reply(sock, ident, "error", ack, {"error": f"{type(exc).__name__}: {exc}"})

    def _handle(self, ident: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        if self.token is not None and not hmac.compare_digest(
            str(msg.get("token", "")).encode(), self.token.encode()
        ):
            raise ProtocolError("wrong or missing token")
        kind, seq, body = msg["type"], msg["seq"], msg["body"]
        if kind not in REQUESTS:
            raise ProtocolError(f"unknown request type {kind!r}")
        if kind == "hello":
            if self._session not in (None, ident):
                raise ProtocolError("robot busy: another client holds the session")
            if self._session == ident and seq <= self._last_seq:
                raise ProtocolError(f"seq {seq} not after {self._last_seq} (replayed hello)")
            self._session, self._last_seq = ident, seq
            self._last_heard = self.clock()
            spec = dataclasses.asdict(self.robot.spec)
            return {"spec": spec, "metadata": self.robot.dataset_metadata()}
        if ident != self._session:
            raise ProtocolError("no session: send hello first")
        if seq <= self._last_seq:
            raise ProtocolError(f"seq {seq} not after {self._last_seq} (replayed or reordered)")
        self._last_seq = seq
        self._last_heard = self.clock()
        return self._dispatch(kind, body)

    def _dispatch(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        robot = self.robot
        if kind == "observation":
            return {"obs": robot.observation()}
        if kind == "send":
            action = body.get("action")
            at_time = body.get("at_time")
            if not isinstance(action, np.ndarray) or action.shape != (robot.spec.action_dim,):
                raise ProtocolError(
                    f"send needs an action array of shape ({robot.spec.action_dim},)"
                )
            if not np.all(np.isfinite(action)):
                raise ProtocolError("send: action must be finite")
            if at_time is not None and not isinstance(at_time, float | int):
                raise ProtocolError("send: at_time must be a number or nil")
            robot.send(action, None if at_time is None else float(at_time))
        elif kind == "stop":
            robot.stop()
        elif kind == "start_episode":
            seed = body.get("seed")
            if seed is not None and not isinstance(seed, int):
                raise ProtocolError("start_episode: seed must be an integer or nil")
            robot.start_episode(seed)
        elif kind == "bye":
            robot.stop()
            self._session = None
        return {}
