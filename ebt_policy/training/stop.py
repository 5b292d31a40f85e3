"""When to stop early: Ctrl-C / SIGTERM, or the ``--minutes`` budget of this invocation."""

from __future__ import annotations

import sys
import time
from typing import Any


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, stop. A second: abort.

    Signal handlers are installed on entering the block, only in the main thread (they cannot be
    set elsewhere), and the previous ones restored on exit. The time budget starts on entry too.
    """

    def __init__(self, minutes: float | None = None) -> None:
        self.minutes = minutes
        self.requested = False
        self.deadline: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step and saving a checkpoint (again to abort)",
            file=sys.stderr,
        )

    def wanted(self) -> bool:
        """True once a signal arrived or the time budget is spent."""
        return self.requested or (self.deadline is not None and time.monotonic() >= self.deadline)

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        self.deadline = time.monotonic() + self.minutes * 60 if self.minutes else None
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
