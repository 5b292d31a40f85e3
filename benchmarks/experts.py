"""Scripted-expert benchmark: success rate, PushT coverage, episode length and speed per task.

    MUJOCO_GL=egl python benchmarks/experts.py [--episodes 50] [--tasks lift can ...] [--seed 0]

Episode i of a task runs with env seed ``seed + i``; one expert (seeded with ``seed``) plays all of
them, as the collector does. Steps/s counts env steps plus expert decisions, single process.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

from ebt_policy.utils import default_mujoco_gl

default_mujoco_gl()

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ebt_policy.envs import get_task, list_tasks  # noqa: E402


@dataclass
class ExpertResult:
    task: str
    episodes: int
    success_rate: float
    mean_coverage: float | None  # pusht: mean over episodes of the max coverage
    mean_length: float
    steps_per_s: float


def run_expert(task: str, episodes: int, seed: int = 0) -> ExpertResult:
    """Play ``episodes`` episodes of ``task`` with its scripted expert and measure them."""
    spec = get_task(task)
    env = spec.make_env()
    expert = spec.make_expert(seed)
    successes, coverages, lengths = [], [], []
    steps = 0
    start = time.perf_counter()
    try:
        for i in range(episodes):
            expert.reset()
            obs, info = env.reset(seed=seed + i)
            length = 0
            while True:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                length += 1
                if terminated or truncated:
                    break
            steps += length
            successes.append(bool(info["success"]))
            lengths.append(length)
            if "max_coverage" in info:
                coverages.append(float(info["max_coverage"]))
    finally:
        env.close()
    elapsed = time.perf_counter() - start
    return ExpertResult(
        task=task,
        episodes=episodes,
        success_rate=float(np.mean(successes)),
        mean_coverage=float(np.mean(coverages)) if coverages else None,
        mean_length=float(np.mean(lengths)),
        steps_per_s=steps / elapsed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tasks", nargs="+", default=None, help="default: all registered tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    tasks = args.tasks or list_tasks()
    for task in tasks:
        get_task(task)  # fail early on a typo

    console = Console()
    table = Table(title=f"Scripted experts ({args.episodes} episodes per task, seed {args.seed})")
    for column in ("task", "episodes", "success", "mean coverage", "mean length", "steps/s"):
        table.add_column(column, justify="left" if column == "task" else "right")
    results = []
    for task in tasks:
        result = run_expert(task, args.episodes, args.seed)
        results.append(result)
        cov = "-" if result.mean_coverage is None else f"{result.mean_coverage:.3f}"
        table.add_row(
            task,
            str(result.episodes),
            f"{result.success_rate:.0%}",
            cov,
            f"{result.mean_length:.1f}",
            f"{result.steps_per_s:.0f}",
        )
        console.print(
            f"{task}: success {result.success_rate:.0%}, coverage {cov}, "
            f"length {result.mean_length:.1f}, {result.steps_per_s:.0f} steps/s"
        )
    console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)


if __name__ == "__main__":
    main()
