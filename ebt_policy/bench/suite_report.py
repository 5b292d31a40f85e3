"""The suite's table: cells aggregated over seeds per (task, variant), as JSON, Markdown and rich.

For every (task, variant) two rows: ``last`` (the final checkpoint) and ``best`` (the evaluated
checkpoint with the highest success, then coverage, earliest on ties). ``best`` is picked on the
evaluation episodes themselves, so it is an optimistic number; the table says so.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

BEST_NOTE = (
    "last: the final checkpoint; best: the evaluated checkpoint with the highest success "
    "(picked on the same evaluation episodes, so optimistic)"
)
LATENCY_NOTE = (
    "latency: per predict_chunk call during the evaluation (one call plans for every env slot "
    "that needs a chunk, at most --workers)"
)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _std(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, variant, last|best), in the order the cells come."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        for variant in res["variants"]:
            groups.setdefault((res["cell"]["task"], variant), []).append(res)
    rows = []
    for (task, variant), cells in groups.items():
        for which in ("last", "best"):
            picked = [c["variants"][variant][which] for c in cells]
            success = [p["success_rate"] for p in picked]
            rows.append({
                "task": task, "policy": variant, "preset": cells[0]["cell"]["preset"],
                "checkpoint": which, "steps": [p["step"] for p in picked],
                "seeds": [c["cell"]["seed"] for c in cells],
                "success_mean": _mean(success), "success_std": _std(success),
                "success_per_seed": success,
                "coverage_mean": _mean([p["mean_coverage"] for p in picked]),
                "inference_steps": _mean([p["mean_descent_steps"] for p in picked]),
                "latency_p50_ms": _mean([p["latency_p50_ms"] for p in picked]),
                "latency_p99_ms": _mean([p["latency_p99_ms"] for p in picked]),
                "train_wall_s": _mean([c["train"]["wall_s"] for c in cells]),
                "train_steps": _mean([c["train"]["steps"] for c in cells]),
                "batch_size": cells[0]["train"]["batch_size"],
                "samples_per_s": _mean([c["train"]["samples_per_s"] for c in cells]),
                "episodes": picked[0]["n_episodes"],
                "threads": sorted({c["train"].get("threads") for c in cells} - {None}),
            })  # fmt: skip
    return rows


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Date, machine (CPU model, cores) and versions, for the table's header."""
    from ebt_policy import __version__
    from ebt_policy.bench.latency import machine_info

    machine = machine_info("cpu")
    versions = {"ebt-policy": __version__, "python": platform.python_version()}
    for package in ("torch", "mujoco", "robosuite", "gym-pusht", "diffusers", "ray"):
        versions[package] = _version(package)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": machine["cpu"], "cores": machine["cores"], "os": platform.platform()},
        "versions": {k: v for k, v in versions.items() if v is not None},
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row_cells(row: dict[str, Any]) -> list[str]:
    """A row's table cells (shared by the Markdown and the rich table)."""
    n = len(row["seeds"])
    success = f"{row['success_mean']:.0%}"
    if row["success_std"] is not None:
        success += f" ± {row['success_std']:.0%}"
    steps = sorted(set(row["steps"]))
    at = "/".join(str(s) for s in steps)
    return [
        row["task"], row["policy"], f"{row['preset']} / {row['batch_size']}",
        f"{row['checkpoint']} @{at}",
        f"{success} (n={n})", _fmt(row["coverage_mean"], ".3f"),
        _fmt(row["inference_steps"], ".1f"),
        f"{_fmt(row['latency_p50_ms'], '.1f')} / {_fmt(row['latency_p99_ms'], '.1f')}",
        _fmt(row["train_wall_s"], ".0f"), _fmt(row["samples_per_s"], ".0f"),
    ]  # fmt: skip


HEADERS = ["task", "policy", "preset / batch", "checkpoint @step", "success (seeds)",
           "PushT coverage", "inference steps", "chunk ms p50 / p99", "train s",
           "samples/s"]  # fmt: skip


def _threads_line(report: dict[str, Any]) -> str:
    """ " Torch threads per cell: N." (the cells' own settings, from their results), or ""."""
    threads = sorted({t for row in report["rows"] for t in row.get("threads", [])})
    return f" Torch threads per cell: {', '.join(map(str, threads))}." if threads else ""


def markdown(report: dict[str, Any]) -> str:
    """The suite's table as Markdown, with the command, date, machine and versions."""
    env, ident = report["environment"], report["suite"]
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    budget = (
        f"{ident['budget_steps']} steps" if ident["budget_steps"] is not None
        else f"{ident['budget_minutes']} min"
    )  # fmt: skip
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Date: {env['date']}. Machine: {machine['cores']} cores, {machine['cpu']}. "
        f"Versions: {versions}.",
        "",
        f"Budget {budget} per cell, {ident['demos']} demonstrations per task, "
        f"{ident['episodes']} evaluation episodes per checkpoint (env seeds 100000 + 10000 * seed "
        "+ i, never used for collection); success: mean ± std over seeds." + _threads_line(report),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join(row_cells(row)) + " |")
    lines += ["", f"{BEST_NOTE}. {LATENCY_NOTE}.", ""]
    if report.get("missing"):
        lines += ["Not finished, so not in the table: " + ", ".join(report["missing"]) + ".", ""]
    return "\n".join(lines)


def rich_table(report: dict[str, Any]) -> Any:
    """The suite's table for the terminal."""
    from rich.table import Table

    table = Table(title="ebt-policy bench suite", caption=BEST_NOTE)
    for name in HEADERS:
        table.add_column(name, justify="left" if name in ("task", "policy") else "right")
    for row in report["rows"]:
        table.add_row(*row_cells(row))
    return table
