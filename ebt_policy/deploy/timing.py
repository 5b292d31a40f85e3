"""Precise waits for fixed-rate loops: sleep most of the way, then spin for the last bit.

``time.sleep`` wakes up late by up to a scheduler tick (about 1 ms on Linux, more under load), so
a loop that only sleeps drifts and jitters. Sleeping until ``spin_s`` before the deadline and
busy-waiting the rest trades a little CPU for sub-millisecond wake-ups. Deadlines are absolute
(``next += period``), so one late tick does not shift every later one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Rate", "sleep_until"]

SPIN_S = 0.001  # busy-wait this long before each deadline


def sleep_until(deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Return at ``deadline`` (on ``clock``'s scale) or as soon after as possible."""
    remaining = deadline - clock()
    if remaining > SPIN_S:
        time.sleep(remaining - SPIN_S)
    while clock() < deadline:
        pass


class Rate:
    """Ticks at ``hz`` on absolute deadlines; :meth:`sleep` waits for the next one.

    When a tick overruns by more than a whole period the schedule restarts from now (and
    :attr:`overruns` counts it) instead of firing a burst of catch-up ticks.
    """

    def __init__(self, hz: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not hz > 0:
            raise ValueError(f"rate must be positive, got {hz}")
        self.period = 1.0 / hz
        self.clock = clock
        self.next = clock() + self.period
        self.overruns = 0

    def sleep(self) -> float:
        """Wait for the next deadline; returns it (the time this tick is meant to start)."""
        now = self.clock()
        if now > self.next + self.period:
            self.overruns += 1
            self.next = now
        else:
            sleep_until(self.next, self.clock)
        tick = self.next
        self.next += self.period
        return tick
