"""A fake UR controller served to other processes, and the proxy the fake interfaces use there.

On hardware the arm's controller is another machine: when the process driving it dies, the
controller notices (the RTDE watchdog) and stops the arm. To test that, :func:`serve_fake` runs a
:class:`~ebt_policy.deploy.robots.ur.fake.FakeURController` behind a zmq REP socket (msgpack;
only the controller's interface methods can be called) and ``ur-fake://HOST:PORT`` in another
process reaches it through :class:`RemoteFakeController`. Tests only; loopback only.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import zmq

from ebt_policy.deploy.robots.ur.fake import FakeURController

__all__ = ["METHODS", "RemoteFakeController", "serve_fake"]

# what a remote process may call
METHODS = frozenset({
    "submit", "state", "joints", "upload_script", "stop_script", "set_watchdog", "kick_watchdog",
    "trigger_protective_stop", "unlock_protective_stop", "status",
})  # fmt: skip


def serve_fake(controller: FakeURController, bind: str, stop: threading.Event) -> None:
    """Answer calls to ``controller`` at ``bind`` (``tcp://127.0.0.1:PORT``) until ``stop``."""
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(bind)
    try:
        while not stop.is_set():
            if not sock.poll(20):
                continue
            try:
                name, args = msgpack.unpackb(sock.recv(), raw=False)
                if name not in METHODS:
                    raise ValueError(f"unknown method {name!r}")
                reply = {"ok": getattr(controller, name)(*args)}
            except Exception as exc:  # a bad call must not end the fake arm
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sock.send(msgpack.packb(reply, use_bin_type=True))
    finally:
        sock.close()


class RemoteFakeController:
    """Calls a controller served by :func:`serve_fake` at ``host:port`` (thread-safe)."""

    def __init__(self, address: str, timeout_s: float = 2.0) -> None:
        self.address = address if address.startswith("tcp://") else f"tcp://{address}"
        self.timeout_ms = int(timeout_s * 1000)
        self._lock = threading.Lock()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.connect(self.address)
        return sock

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._sock.send(msgpack.packb([name, list(args)], use_bin_type=True))
                reply = msgpack.unpackb(self._sock.recv(), raw=False)
            except zmq.Again:
                self._sock.close()  # a REQ socket that missed its reply cannot send again
                self._sock = self._connect()
                raise RuntimeError(f"fake UR controller at {self.address}: no reply") from None
        if "error" in reply:
            raise RuntimeError(f"fake UR controller at {self.address}: {reply['error']}")
        return reply["ok"]

    def __getattr__(self, name: str) -> Any:
        if name not in METHODS:
            raise AttributeError(name)
        return lambda *args: self._call(name, *args)
