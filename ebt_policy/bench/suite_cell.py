"""One suite cell (task x policy x seed): train with the suite's budget, evaluate checkpoints.

A cell's folder::

    run/                       the training run (`ebt-policy train`'s layout; resumed exactly)
    plan.json                  --budget-minutes only: the step count the probe planned
    evals/step_XXXXXXXX-<variant>.json   one evaluation (EvalResult JSON), written atomically
    result.json                the cell's summary, written atomically last: the cell is done

Every stage reuses what an earlier, interrupted attempt left: training resumes from
``run/checkpoints/last`` (bit-exact on CPU), an evaluation already written is read back, so a
killed cell continues where it stopped. Intermediate checkpoints come from the training loop's
own ``save_every`` (kept with ``keep_checkpoints=0``); both are settings that do not change the
optimisation (``RESUMABLE_CHANGES``), so the trained weights equal a plain ``ebt-policy train``'s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ebt_policy.bench.suite_config import CellSpec, checkpoint_steps

PROBE_STEPS = 30  # --budget-minutes: steps timed to plan the step count
RESULT_NAME = "result.json"

Report = Callable[[str], None]


def read_result(spec: CellSpec) -> dict[str, Any] | None:
    """The cell's finished result, or None when it is missing or was computed for another spec."""
    path = Path(spec.cell_dir) / RESULT_NAME
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("cell") == spec.identity() else None


def _train_config(spec: CellSpec, out: Path, steps: int, **fields: Any) -> Any:
    from ebt_policy.training import TrainConfig

    # the preset's recipe (lr, batch, warm-up) as `ebt-policy train --policy P --preset Q`
    return TrainConfig(
        dataset=spec.demos_path, out=str(out), policy=spec.policy, preset=spec.preset,
        steps=steps, batch_size=spec.batch_size, seed=spec.seed, device=spec.device,
        progress=False, tensorboard=False,
        **fields,
    )  # fmt: skip


def planned_steps(spec: CellSpec, report: Report) -> int:
    """The cell's step budget: ``budget_steps``, or what ``budget_minutes`` fits at the speed a
    short probe run measures (saved in plan.json, so a resumed cell keeps its schedule)."""
    if spec.budget_steps is not None:
        return spec.budget_steps
    from ebt_policy.training import train
    from ebt_policy.utils import write_json_atomic

    cell_dir = Path(spec.cell_dir)
    plan_path = cell_dir / "plan.json"
    if plan_path.exists():
        return int(json.loads(plan_path.read_text())["steps"])
    assert spec.budget_minutes is not None
    report(f"probe {PROBE_STEPS} steps")
    probe = cell_dir / "probe"
    shutil.rmtree(probe, ignore_errors=True)  # a probe killed half-way starts over
    train(_train_config(spec, probe, PROBE_STEPS, val_every=0, save_every=0, log_every=10))
    records = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
    rate = float(records[-1]["steps_per_s"])  # the last window: past the first-step overheads
    steps = max(1, int(rate * spec.budget_minutes * 60))
    write_json_atomic(plan_path, {"steps": steps, "probe_steps_per_s": rate})
    shutil.rmtree(probe, ignore_errors=True)
    return steps


def train_cell(spec: CellSpec, steps: int, report: Report) -> Path:
    """Train (or resume, or reuse) the cell's run; returns the run directory."""
    from ebt_policy.quickstart import _checkpoint_step, _train_seconds
    from ebt_policy.training import train

    run_dir = Path(spec.cell_dir) / "run"
    done = _checkpoint_step(run_dir)
    if done is not None and done >= steps:
        return run_dir
    minutes = None
    if spec.budget_minutes is not None:
        left = spec.budget_minutes - _train_seconds(run_dir) / 60
        if done is not None and left <= 0:
            return run_dir  # the budget was spent before the steps: the last checkpoint stands
        minutes = max(left, 1e-3)
    save_every, _ = checkpoint_steps(steps, spec.eval_every)
    report(f"train {steps} steps" + (f" (resuming at {done})" if done else ""))
    train(
        _train_config(
            spec, run_dir, steps, minutes=minutes, resume=done is not None,
            save_every=save_every, keep_checkpoints=0,
        )
    )  # fmt: skip
    return run_dir


def _eval_summary(data: dict[str, Any], step: int, variant: str) -> dict[str, Any]:
    keys = ("success_rate", "n_success", "n_episodes", "mean_coverage", "mean_descent_steps",
            "latency_p50_ms", "latency_p99_ms", "wall_time_s")  # fmt: skip
    return {"step": step, "variant": variant, **{k: data.get(k) for k in keys}}


def evaluate_checkpoint(
    spec: CellSpec, checkpoint: Path, step: int, variant: str, metadata: Any, report: Report
) -> dict[str, Any]:
    """Evaluate one checkpoint as ``variant`` (reusing an evaluation already written)."""
    path = Path(spec.cell_dir) / "evals" / f"step_{step:08d}-{variant.replace(':', '-')}.json"
    if path.exists():
        try:
            return _eval_summary(json.loads(path.read_text()), step, variant)
        except json.JSONDecodeError:
            pass  # atomic writes make this unlikely; evaluate again
    from ebt_policy import load_policy
    from ebt_policy.envs.runner import EvalConfig, evaluate
    from ebt_policy.utils import resolve_device

    report(f"eval step {step} {variant} ({spec.episodes} episodes)")
    policy = load_policy(checkpoint, device=resolve_device(spec.device))
    _, _, sampler = variant.partition(":")
    if sampler:
        policy.set_sampler(sampler)  # its default step count: 100 for DDPM, 10 for DDIM
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = EvalConfig(
        metadata=metadata, episodes=spec.episodes, seed=spec.eval_seed, workers=spec.workers,
        json_path=path,
    )  # fmt: skip
    return _eval_summary(evaluate(policy, cfg).to_dict(), step, variant)


def best_of(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The best evaluation: highest success, then highest coverage, then the earliest step."""
    return max(evals, key=lambda e: (e["success_rate"], e["mean_coverage"] or 0.0, -e["step"]))


def run_cell(spec: CellSpec, report: Report | None = None) -> dict[str, Any]:
    """Train and evaluate one cell, with ``spec.threads`` torch threads (restored after); writes
    and returns its result (see the module docstring)."""
    import torch

    report = report or (lambda text: None)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        return _run_cell(spec, report, t0)
    finally:
        torch.set_num_threads(threads_before)


def _run_cell(spec: CellSpec, report: Report, t0: float) -> dict[str, Any]:
    import torch

    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies.checkpoint import read_checkpoint_config
    from ebt_policy.quickstart import _train_seconds
    from ebt_policy.utils import write_json_atomic

    steps = planned_steps(spec, report)
    run_dir = train_cell(spec, steps, report)
    run_config = json.loads((run_dir / "config.json").read_text())
    metadata = EpisodeStore.open(spec.demos_path, mode="r").metadata
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    last_step = int(read_checkpoint_config(checkpoints[-1]).get("step", 0))
    _, wanted = checkpoint_steps(steps, spec.eval_every)
    variants: dict[str, Any] = {}
    for variant in spec.variants:
        evals = []
        for ckpt in checkpoints:
            step = int(ckpt.name.removeprefix("step_"))
            if step in wanted or step == last_step:
                evals.append(evaluate_checkpoint(spec, ckpt, step, variant, metadata, report))
        variants[variant] = {"evals": evals, "last": evals[-1], "best": best_of(evals)}
    train_s = _train_seconds(run_dir)
    batch = int(run_config["train"]["batch_size"])
    result = {
        "cell": spec.identity(),
        "train": {
            "planned_steps": steps,
            "steps": last_step,
            "batch_size": batch,
            "wall_s": train_s,
            "samples_per_s": last_step * batch / train_s if train_s > 0 else None,
            "steps_per_s": last_step / train_s if train_s > 0 else None,
            "n_parameters": run_config.get("n_parameters"),
            "threads": torch.get_num_threads(),  # this attempt's (a resumed cell: the last)
        },
        "variants": variants,
        "cell_wall_s": time.perf_counter() - t0,  # this attempt's; a reused cell keeps its own
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},  # where it ran (Ray)
    }
    write_json_atomic(Path(spec.cell_dir) / RESULT_NAME, result)
    return result
