"""A fake Robotiq URCap server (the ASCII protocol on port 63352), for tests and ``ur-fake://``.

It answers ``SET <VAR> <int> [<VAR> <int> ...]`` with ``ack`` and ``GET <VAR>`` with
``<VAR> <int>``; after ``SET ACT 1`` the status ``STA`` reads 3 (activated) once
``activation_s`` has passed, and with ``GTO 1`` the position ``POS`` moves towards the requested
one at ``rate`` counts per second. Anything else is answered ``?`` (as a confused server would),
which the real client reports as an error.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["FakeRobotiqServer"]


class FakeRobotiqServer:
    """Serves one fake gripper on ``host``:``port`` (0: a free port, see :attr:`port`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        activation_s: float = 0.05,
        rate: float = 2000.0,
    ) -> None:
        self._server = socket.create_server((host, port))
        self.port = self._server.getsockname()[1]
        self.activation_s, self.rate = float(activation_s), float(rate)
        self.vars = {"ACT": 0, "GTO": 0, "PRE": 0, "SPE": 255, "FOR": 100, "FLT": 0}
        self._pos, self._t = 0.0, time.monotonic()
        self._activated_at: float | None = None
        self._lock = threading.Lock()
        self.requests: list[str] = []  # every line received (tests read it)
        self._thread = threading.Thread(target=self._accept, name="fake-robotiq", daemon=True)
        self._thread.start()

    def _update(self) -> None:
        now = time.monotonic()
        if self.vars["ACT"] and self.vars["GTO"] and self._status() == 3:
            step = self.rate * (now - self._t)
            err = self.vars["PRE"] - self._pos
            self._pos += max(-step, min(step, err))
        self._t = now

    def _status(self) -> int:
        done = self._activated_at is not None and time.monotonic() >= self._activated_at
        return 3 if done else (1 if self._activated_at is not None else 0)

    def handle(self, line: str) -> str:
        """The answer to one request line."""
        with self._lock:
            self.requests.append(line)
            self._update()
            words = line.split()
            if len(words) >= 3 and words[0] == "SET" and len(words) % 2 == 1:
                for var, value in zip(words[1::2], words[2::2], strict=True):
                    if not value.isdigit() or var not in (*self.vars, "POS"):
                        return "?"
                    if var == "POS":
                        var = "PRE"  # SET POS is the request; GET POS the measurement
                    self.vars[var] = int(value)
                    if var == "ACT":
                        self._activated_at = (
                            time.monotonic() + self.activation_s if value != "0" else None
                        )
                return "ack"
            if len(words) == 2 and words[0] == "GET":
                var = words[1]
                if var == "POS":
                    return f"POS {int(round(self._pos))}"
                if var == "STA":
                    return f"STA {self._status()}"
                if var == "OBJ":
                    return f"OBJ {3 if abs(self.vars['PRE'] - self._pos) < 1 else 0}"
                if var in self.vars:
                    return f"{var} {self.vars[var]}"
            return "?"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(1024)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    answer = self.handle(line.decode("ascii", "replace").strip())
                    conn.sendall(answer.encode("ascii") + b"\n")

    def close(self) -> None:
        """Stop accepting connections."""
        self._server.close()
