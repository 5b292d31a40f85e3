"""One progress bar for every long job (collection, training, evaluation), on ``rich``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Bar:
    """A thin handle: ``update(advance=1, **fields)``; fields show as ``name value``."""

    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def update(self, advance: float = 0, **fields: Any) -> None:
        self._progress.update(self._id, advance=advance, **fields)


class _NoBar:
    def update(self, advance: float = 0, **fields: Any) -> None:
        pass


@contextlib.contextmanager
def progress_bar(
    label: str,
    total: float,
    *,
    completed: float = 0,
    fields: dict[str, str] | None = None,
    enabled: bool = True,
    elapsed: bool = True,
) -> Iterator[_Bar | _NoBar]:
    """``with progress_bar("eval lift", 50, fields={"success": "-"}) as bar: bar.update(1)``.

    ``fields`` are extra columns, shown in order as ``name value`` and updated by keyword. When
    ``enabled`` is false nothing is drawn. In a log file (not a terminal) rich draws only at the
    end instead of a line per refresh.
    """
    if not enabled:
        yield _NoBar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fields = dict(fields or {})
    columns: list[Any] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    if elapsed:
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        task_id = progress.add_task(label, total=total, completed=completed, **fields)
        yield _Bar(progress, task_id)
