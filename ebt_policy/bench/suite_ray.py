"""The Ray task of ``ebt-policy bench suite --executor ray``: one cell, run in a Ray worker.

Kept apart from :mod:`ebt_policy.bench.suite` so a worker imports only what a cell needs; the
driver wraps :func:`cell_task` with ``ray.remote`` (the CPUs it reserves are the driver's choice).
"""

from __future__ import annotations

from typing import Any

from ebt_policy.bench.suite_cell import run_cell
from ebt_policy.bench.suite_config import CellSpec


def cell_task(spec: CellSpec) -> dict[str, Any]:
    """Train and evaluate ``spec`` in this worker; the result is also written to its folder."""
    from ebt_policy.utils import default_mujoco_gl

    default_mujoco_gl()  # a worker may not have inherited MUJOCO_GL
    return run_cell(spec)
