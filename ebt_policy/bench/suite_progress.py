"""The suite's progress display (rich, on stderr): cells done of all, the running cell and its
stage, and an estimate of the time left.

The estimate sums, over the cells still to run, the mean time of finished cells of the same
policy (policies differ most: EBT's training and the U-Net's DDPM sampling are the slow ones),
or of any policy while a policy has none; cells finished by an earlier command count too, so a
resumed suite has an estimate from the start. With Ray, cells overlap: the estimate is then the
time per finished cell of this command times the cells left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ebt_policy.bench.suite_config import CellSpec


class Display:
    """``with Display(pending, total, earlier) as d: d.start(spec)("train"); d.done(spec)``.

    Args:
        pending: the cells this command runs, in order.
        total: all cells of the command (finished ones included).
        earlier: ``(policy, seconds)`` of cells finished before.
        parallel: cells run concurrently (Ray).
    """

    def __init__(
        self,
        pending: list[CellSpec],
        total: int,
        earlier: list[tuple[str, float]],
        parallel: bool = False,
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("suite"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("left {task.fields[eta]}"), TextColumn("{task.description}"),
            console=Console(stderr=True),
        )  # fmt: skip
        self.total, self.parallel = total, parallel
        self.remaining = list(pending)
        self.durations: dict[str, list[float]] = {}
        for policy, seconds in earlier:
            self.durations.setdefault(policy, []).append(seconds)
        self.finished = 0
        self.cells_start: float | None = None  # when the first cell started (after collection)
        self.cell_start = time.monotonic()
        self.running: CellSpec | None = None
        eta = self._eta_text()
        self.task_id = self.progress.add_task(
            "", total=total, completed=total - len(pending), eta=eta
        )

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def estimate_s(self) -> float | None:
        """Seconds the remaining cells should take, or None without any measurement yet."""
        now = time.monotonic()
        if self.parallel:
            if not self.finished or self.cells_start is None:
                return None
            return (now - self.cells_start) / self.finished * len(self.remaining)
        every = [s for values in self.durations.values() for s in values]
        if not every:
            return None
        total = 0.0
        for spec in self.remaining:
            total += float(np.mean(self.durations.get(spec.policy) or every))
        if self.running is not None:  # part of the running cell is behind us
            total -= min(
                now - self.cell_start,
                float(np.mean(self.durations.get(self.running.policy) or every)),
            )
        return max(total, 0.0)

    def _eta_text(self) -> str:
        eta = self.estimate_s()
        return "?" if eta is None else f"~{eta / 60:.1f} min"

    def stage(self, text: str) -> None:
        """Show ``text`` as what runs now (and refresh the estimate). Without a terminal (a log
        file) rich draws nothing until the end, so each stage is also printed as a line there."""
        eta = self._eta_text()
        self.progress.update(self.task_id, description=text, eta=eta)
        if not self.progress.console.is_terminal:
            done = self.total - len(self.remaining)
            self.progress.console.print(f"[{done}/{self.total} done, left {eta}] {text}")

    def start(self, spec: CellSpec | None = None) -> Callable[[str], None]:
        """Mark ``spec`` as running (None: cells started elsewhere); returns a stage callback."""
        self.cell_start = time.monotonic()
        if self.cells_start is None:
            self.cells_start = self.cell_start
        self.running = spec
        name = spec.name if spec is not None else "cells"
        self.stage(name)
        return lambda text: self.stage(f"{name}: {text}")

    def done(self, spec: CellSpec) -> None:
        """``spec`` finished: advance, record its time and print a line (a log file, not being a
        terminal, gets rich's bar only at the end)."""
        now = time.monotonic()
        seconds = now - self.cell_start
        if not self.parallel:
            self.durations.setdefault(spec.policy, []).append(seconds)
        self.remaining.remove(spec)
        self.finished += 1
        self.running = None
        eta = self._eta_text()
        self.progress.update(self.task_id, advance=1, eta=eta)
        done = self.total - len(self.remaining)
        took = f" ({seconds:.0f} s)" if not self.parallel else ""
        self.progress.console.print(f"done {done}/{self.total} {spec.name}{took}, left {eta}")
