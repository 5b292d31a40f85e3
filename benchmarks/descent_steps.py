"""Closed-loop success against the number of inference descent steps, per trained EBT run.

    MUJOCO_GL=egl python benchmarks/descent_steps.py RUN [RUN ...] [--settings 2 3 5 20:1e-3]
        [--episodes 50] [--workers 2]

RUN is a run directory (``ebt-policy train --out``) or a quickstart ``--out`` (its ``run/``).
Each setting is ``STEPS`` (exactly that many descent steps) or ``STEPS:MIN_GRAD`` (the adaptive
rule: a sample stops early once its gradient norm falls below MIN_GRAD). Every setting of a run
is evaluated on the same seeded episodes (seeds 100000 + i by default) with the same initial
noise, so the rows differ only by the stopping rule. Prints one table measured on this run (with
pusht's mean max coverage where the task reports one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ebt_policy.utils import default_mujoco_gl

default_mujoco_gl()


def parse_setting(text: str) -> tuple[int, float | None]:
    steps, _, grad = text.partition(":")
    return int(steps), (float(grad) if grad else None)


def run_dir(path: Path) -> Path:
    return path / "run" if (path / "run" / "checkpoints").is_dir() else path


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from ebt_policy import load_policy
    from ebt_policy.envs.cli import checkpoint_metadata
    from ebt_policy.envs.runner import EvalConfig, evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--settings", nargs="+", default=["2", "3", "5", "20:1e-3"])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.settings]

    table = Table(title=f"Success vs inference descent steps ({args.episodes} episodes each)")
    for col in ("run", "trained N", "descent steps", "min grad", "success", "mean steps"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for col in ("mean coverage", "latency p50 ms", "energy range"):
        table.add_column(col, justify="right")
    for path in args.runs:
        rd = run_dir(path)
        policy = load_policy(rd)
        metadata = checkpoint_metadata(rd)
        cfg = policy.config.descent
        trained = f"{cfg.train_steps_base}+U{{0..{cfg.train_steps_extra}}}"
        if not cfg.train_steps_extra:
            trained = str(cfg.train_steps_base)
        for descent_steps, min_grad in settings:
            # min_grad 0 never stops early: exactly descent_steps steps
            policy.set_inference(descent_steps=descent_steps, descent_min_grad=min_grad or 0.0)
            config = EvalConfig(
                metadata=metadata, episodes=args.episodes, seed=args.seed, workers=args.workers
            )
            result = evaluate(policy, config)
            agg = result.aggregates()
            table.add_row(
                str(path),
                trained,
                str(descent_steps),
                "-" if min_grad is None else f"{min_grad:g}",
                f"{result.success_rate:.0%} ({agg['n_success']}/{result.n_episodes})",
                f"{agg['mean_descent_steps']:.2f}",
                "-" if agg["mean_coverage"] is None else f"{agg['mean_coverage']:.3f}",
                f"{agg['latency_p50_ms']:.2f}",
                f"{agg['energy_min']:.3f} .. {agg['energy_max']:.3f}",
            )
            print(
                f"{path} descent_steps={descent_steps} min_grad={min_grad}: "
                f"{result.success_rate:.0%}"
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
