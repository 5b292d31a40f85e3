"""`ebt-policy bench suite`: every policy trained on the same demos with the same budget,
evaluated on the same seeded episodes, one table.

``run_suite(SuiteArgs(tasks="twogoal", policies="ebt,mse", budget_steps=500))``:

1. checks every argument (and that ``--out`` holds no suite with other settings) before writing;
2. collects each task's demos once with the scripted expert (``OUT/demos/<task>.zarr``, reused and
   topped up by later runs) and checks their seeds stay below the evaluation seeds;
3. runs the cells (task x policy x seed, :mod:`ebt_policy.bench.suite_cell`) that have no finished
   result, with the local executor or Ray;
4. aggregates the results over seeds and writes the JSON and, next to it, the Markdown table.

The local executor runs one cell at a time in this process: the cells share the one torch and
MuJoCo import, the progress display sees each stage (collect, train, eval), and Ctrl-C reaches the
training loop, which saves a checkpoint before stopping; a crash loses at most the cell's current
stage, since every stage is on disk. With ``--executor ray`` cells run as Ray tasks (a task per
cell, ``--ray-cpus-per-cell`` CPUs each); ``OUT`` must then be a path every Ray node sees.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from ebt_policy.bench.suite_cell import read_result, run_cell
from ebt_policy.bench.suite_config import (
    COLLECT_SEED,
    EVAL_SEED_BASE,
    CellSpec,
    SuiteArgs,
    SuitePlan,
    check_same_suite,
    merged_identity,
    plan_suite,
)
from ebt_policy.bench.suite_progress import Display
from ebt_policy.errors import ConfigError, DatasetError

SUITE_FILE = "suite.json"


def _read_saved(out: Path) -> dict[str, Any] | None:
    path = out / SUITE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"--out {out}: {path} is not valid JSON; choose another --out") from None


def prepare(args: SuiteArgs) -> tuple[SuitePlan, dict[str, Any] | None]:
    """Every check of the command, before anything is written (ConfigError on refusal)."""
    plan = plan_suite(args)
    saved = _read_saved(plan.out)
    if saved is not None:
        check_same_suite(saved, plan)
    elif plan.out.is_dir() and any(plan.out.iterdir()):
        raise ConfigError(
            f"--out {plan.out}: exists and holds no {SUITE_FILE}; choose an empty or new --out"
        )
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--executor ray: the ray package is not installed (pip install 'ebt-policy[ray]')"
            ) from None
    return plan, saved


def collect_demos(task: str, path: Path, args: SuiteArgs) -> None:
    """Collect (or top up) the task's demonstrations; DatasetError when their seeds would reach
    the evaluation seeds."""
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.envs.collect import CollectConfig, collect

    collect(
        CollectConfig(
            task=task, episodes=args.demos, out=path, seed=COLLECT_SEED, images=args.images,
            workers=args.workers,
        )
    )  # fmt: skip
    store = EpisodeStore.open(path, mode="r")
    if store.n_episodes < args.demos:
        raise DatasetError(
            f"{path}: the {task} expert produced only {store.n_episodes} of {args.demos} "
            "episodes; rerun to continue"
        )
    next_seed = int(store.metadata["collection"]["next_seed"])
    if next_seed > EVAL_SEED_BASE:
        raise DatasetError(
            f"{path}: collection used env seeds up to {next_seed - 1}, which overlap the "
            f"evaluation seeds from {EVAL_SEED_BASE}"
        )


def run_local(pending: list[CellSpec], display: Display) -> None:
    """One cell after the other, in this process."""
    for spec in pending:
        run_cell(spec, display.start(spec))
        display.done(spec)


def run_ray(pending: list[CellSpec], args: SuiteArgs, display: Display) -> None:
    """Cells as Ray tasks (joining ``--ray-address``, a running instance, or starting one)."""
    import ray

    from ebt_policy.bench.suite_ray import cell_task

    if not ray.is_initialized():
        ray.init(address=args.ray_address, log_to_driver=False)
    cpus = args.ray_cpus_per_cell if args.ray_cpus_per_cell is not None else args.workers
    remote = ray.remote(num_cpus=cpus)(cell_task)
    refs = {remote.remote(spec): spec for spec in pending}
    display.start()
    display.stage(f"{len(refs)} cells on Ray")
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            spec = refs.pop(ref)
            ray.get(ref)  # re-raises a cell's error here
            display.done(spec)


def run_suite(args: SuiteArgs, argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or continue) the suite; returns the report written to the JSON file."""
    from ebt_policy.utils import write_json_atomic

    plan, saved = prepare(args)
    if args.report_only:
        if saved is None:
            raise ConfigError(f"--out {plan.out}: no suite there to report on")
    else:
        plan.out.mkdir(parents=True, exist_ok=True)
        suite_record = {"identity": merged_identity(saved, plan)}
        write_json_atomic(plan.out / SUITE_FILE, suite_record)

    finished = {s: read_result(s) for s in plan.cells}
    if args.report_only:
        return write_report(plan, argv, finished)
    pending = [s for s, r in finished.items() if args.recompute or r is None]
    # the time cells took before (a resumed suite): what the first estimate of the rest uses
    earlier = [(s.policy, r["cell_wall_s"]) for s, r in finished.items() if r is not None]
    with Display(pending, len(plan.cells), earlier, parallel=args.executor == "ray") as display:
        for task in plan.tasks:
            if any(s.task == task for s in pending):
                display.stage(f"collect {args.demos} {task} demos")
                collect_demos(task, plan.out / "demos" / f"{task}.zarr", args)
        if args.recompute:  # train and evaluate again from scratch
            for spec in pending:
                shutil.rmtree(spec.cell_dir, ignore_errors=True)
        if args.executor == "ray":
            run_ray(pending, args, display)
        else:
            run_local(pending, display)

    finished = {spec: read_result(spec) for spec in plan.cells}
    for spec, result in finished.items():
        if result is None:  # a cell that ran must have written its result
            raise RuntimeError(f"{spec.cell_dir}: no result after the run")
    return write_report(plan, argv, finished)


def write_report(
    plan: SuitePlan, argv: list[str] | None, finished: dict[CellSpec, dict[str, Any] | None]
) -> dict[str, Any]:
    """The results JSON and Markdown table of the finished cells; the others listed as missing."""
    from ebt_policy.bench.suite_report import aggregate, environment, markdown
    from ebt_policy.utils import atomic_write_text, write_json_atomic

    results = [r for r in finished.values() if r is not None]
    missing = [f"{s.task}/{s.policy}/seed{s.seed}" for s, r in finished.items() if r is None]
    if not results:
        raise ConfigError(f"--out {plan.out}: none of this command's cells has finished yet")
    command = "ebt-policy bench suite" + ("" if argv is None else " " + shlex.join(argv))
    report = {
        "command": command,
        "suite": plan.identity,
        "environment": environment(),
        "rows": aggregate(results),
        "cells": results,
        "missing": missing,
    }
    write_json_atomic(plan.json_path, report)
    atomic_write_text(plan.json_path.with_suffix(".md"), markdown(report))
    return report
