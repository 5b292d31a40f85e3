"""When to stop early: Ctrl-C / SIGTERM, or the ``--minutes`` budget of this invocation."""

from __future__ import annotations

import sys
import time
from typing import Any

from ebt_policy.errors import Interrupted


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, stop. A second: abort.

    Signal handlers are installed on entering the block, only in the main thread (they cannot be
    set elsewhere), and the previous ones restored on exit. The time budget starts on entry too.
    A ``KeyboardInterrupt`` leaving the block after a signal becomes :class:`Interrupted` with
    that signal's number, so the CLI exits 130 for SIGINT and 143 for SIGTERM.
    """

    def __init__(self, minutes: float | None = None) -> None:
        self.minutes = minutes
        self.requested = False
        self.signum: int | None = None  # the first signal received
        self.deadline: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop now, without saving
            raise Interrupted(signum)
        self.requested = True
        self.signum = signum
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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if (
            self.signum is not None
            and isinstance(exc, KeyboardInterrupt)
            and not isinstance(exc, Interrupted)
        ):
            raise Interrupted(self.signum) from None
