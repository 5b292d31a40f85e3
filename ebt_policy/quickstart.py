"""`ebt-policy quickstart`: the whole stack in one command on a small default.

Collect scripted-expert demonstrations -> train EBT-Policy for a bounded time -> evaluate it over
seeded MuJoCo episodes -> print one table. Every stage reuses what an earlier run left in ``--out``
(the episode store resumes, a finished checkpoint is reused, an unfinished one is resumed), so an
interrupted quickstart continues where it stopped; ``--fresh`` starts over (it removes only what
a quickstart writes, and refuses an ``--out`` holding anything else). Every argument is checked
before anything is written.

The defaults (100 low-dim Lift demonstrations, the MLP energy, 5,000 training steps, about five
minutes on a 2-core CPU, capped at ten, planning with the preset's 2 descent steps) are sized so
the command, installation included, stays around ten minutes on a 2-core CPU; the README lists
the numbers measured with them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ebt_policy.errors import ConfigError

# What a quickstart writes into --out (atomic writes add hidden ".<name>..." temporaries).
OWN_ENTRIES = ("demos.zarr", "run", "eval.json", "videos", "quickstart.json")


@dataclass
class QuickstartArgs:
    """Collect demos, train EBT-Policy, evaluate it in simulation, print the results."""

    task: str = "lift"
    """Task to learn (see `ebt-policy collect --help` for the list)."""
    out: Path = Path("runs/quickstart")
    """Where the demos (demos.zarr), the run (run/) and the evaluation (eval.json, videos/) go."""
    episodes: int = 100
    """Scripted-expert demonstrations to collect."""
    eval_episodes: int = 50
    """Seeded evaluation episodes."""
    preset: str = "mlp"
    """Policy preset: mlp (the cheap energy network, the CPU default), tiny, small or paper."""
    steps: int = 5000
    """Training steps (the learning-rate schedule spans these)."""
    minutes: float = 10.0
    """Wall-time cap on training for this invocation (a rerun resumes an unfinished run)."""
    batch_size: int | None = None
    """Training batch size (default: the preset's)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train and run the policy."""
    descent_steps: int | None = None
    """Energy-descent steps per planned chunk at evaluation; None: the checkpoint's own (the
    presets plan with 2, ``tiny`` with 3). Changing it re-evaluates a finished run without
    training again."""
    workers: int = 2
    """Processes for collection and evaluation."""
    seed: int = 0
    """Seed of collection and training; evaluation uses seeds 100000 + i (unseen in the demos)."""
    video: bool = True
    """Write an mp4 of the first evaluation episode."""
    fresh: bool = False
    """Delete what an earlier quickstart left in --out and start over."""

    def __post_init__(self) -> None:
        if self.descent_steps is not None and self.descent_steps < 1:
            raise ConfigError(f"--descent-steps: expected >= 1, got {self.descent_steps}")
        for name in ("episodes", "eval_episodes", "steps", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: expected >= 1, got {getattr(self, name)}"
                )
        if self.minutes <= 0:
            raise ConfigError(f"--minutes: expected > 0, got {self.minutes}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected >= 1, got {self.batch_size}")


@dataclass
class QuickstartResult:
    """Everything the final table shows (also written to OUT/quickstart.json)."""

    task: str
    demos: int
    demo_steps: int
    collect_s: float
    train_steps: int
    train_s: float
    train_reused: bool
    success_rate: float
    n_success: int
    eval_episodes: int
    eval_s: float
    mean_descent_steps: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    energy_min: float | None
    energy_max: float | None
    checkpoint: str
    metrics: str
    eval_json: str
    video: str | None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _checkpoint_step(run_dir: Path) -> int | None:
    """Step of RUN_DIR/checkpoints/last, or None when there is no complete checkpoint."""
    from ebt_policy.policies.checkpoint import read_checkpoint_config, resolve_checkpoint_dir
    from ebt_policy.training.checkpoint import find_last_checkpoint

    last = find_last_checkpoint(run_dir)
    if last is None:
        return None
    return int(read_checkpoint_config(resolve_checkpoint_dir(last)).get("step", 0))


def _train_seconds(run_dir: Path) -> float:
    """Training time from the run's metrics log, summed over resumed invocations.

    Each record covers the steps since the previous one at its ``steps_per_s``; summing those
    intervals leaves out the pauses between invocations of a resumed run.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0.0
    total, prev_step = 0.0, 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step, rate = int(record.get("step", 0)), float(record.get("steps_per_s") or 0.0)
        if step > prev_step and rate > 0:
            total += (step - prev_step) / rate
        prev_step = step
    return total


def check_arguments(args: QuickstartArgs) -> Any:
    """Refuse what the later stages would refuse (task, preset, device, --out), before anything
    is written; returns the torch device. Errors are one line naming the flag."""
    from ebt_policy.envs import get_task
    from ebt_policy.policies import get_preset
    from ebt_policy.utils import resolve_device
    from ebt_policy.utils.paths import check_output_path

    get_task(args.task)
    get_preset("ebt", args.preset)
    device = resolve_device(args.device)
    check_output_path(args.out, "dir", "--out")
    return device


def _is_own(name: str) -> bool:
    """True for an entry a quickstart writes, or a temporary of one (``.eval.json.x.tmp``)."""
    return name in OWN_ENTRIES or any(name.startswith(f".{own}.") for own in OWN_ENTRIES)


def remove_own_outputs(out: Path) -> None:
    """``--fresh``: delete what a quickstart wrote into ``out``, and nothing else.

    Raises:
        ConfigError: ``out`` holds entries a quickstart does not write (nothing is removed).
    """
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if not _is_own(name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)})" if len(foreign) > 5 else "")
        raise ConfigError(
            f"--out {out}: --fresh deletes only what a quickstart writes "
            f"({', '.join(OWN_ENTRIES)}) but it also holds {shown}; move those or choose "
            "another --out"
        )
    for name in entries:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_quickstart(args: QuickstartArgs, console: Any | None = None) -> QuickstartResult:
    """Run (or continue) the quickstart pipeline and return its numbers."""
    from rich.console import Console

    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.envs.collect import CollectConfig, collect
    from ebt_policy.envs.runner import EvalConfig, evaluate
    from ebt_policy.training import TrainConfig, train
    from ebt_policy.utils import write_json_atomic

    console = console or Console()
    device = check_arguments(args)
    out = Path(args.out)
    if args.fresh:
        remove_own_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    demos_path, run_dir = out / "demos.zarr", out / "run"

    # 1. demonstrations (resumable: an existing store is topped up to --episodes)
    console.rule(f"1/3 collect {args.episodes} {args.task} demonstrations")
    t0 = time.perf_counter()
    collect(
        CollectConfig(
            task=args.task,
            episodes=args.episodes,
            out=demos_path,
            seed=args.seed,
            workers=args.workers,
            progress=True,
        )
    )
    collect_s = time.perf_counter() - t0
    store = EpisodeStore.open(demos_path, mode="r")
    if store.n_episodes < args.episodes:
        raise ConfigError(
            f"{demos_path}: the {args.task} expert produced only {store.n_episodes} of "
            f"{args.episodes} episodes; rerun to continue"
        )

    # 2. training (reuse a finished run, resume an unfinished one)
    done_step = _checkpoint_step(run_dir)
    train_reused = done_step is not None and done_step >= args.steps
    if train_reused:
        console.rule(f"2/3 train: reusing the finished run in {run_dir} (step {done_step})")
    else:
        console.rule(f"2/3 train {args.preset} for {args.steps} steps (cap {args.minutes} min)")
        train(
            TrainConfig(
                dataset=str(demos_path),
                out=str(run_dir),
                preset=args.preset,
                steps=args.steps,
                minutes=args.minutes,
                batch_size=args.batch_size,
                seed=args.seed,
                device=args.device,
                resume=done_step is not None,  # continue an unfinished run
            )
        )
    train_steps = _checkpoint_step(run_dir) or 0

    # 3. evaluation on seeds the demos never used
    console.rule(f"3/3 evaluate over {args.eval_episodes} seeded episodes")
    policy = load_policy(run_dir, device=device)  # as training resolves it
    if args.descent_steps is not None:
        policy.set_inference(descent_steps=args.descent_steps)
    t0 = time.perf_counter()
    config = EvalConfig(
        metadata=store.metadata,
        episodes=args.eval_episodes,
        seed=100_000,
        workers=args.workers,
        video_dir=out / "videos" if args.video else None,
        n_videos=1,
        json_path=out / "eval.json",
        progress=True,
    )
    result = evaluate(policy, config)
    eval_s = time.perf_counter() - t0
    agg = result.aggregates()
    video = next((e.video for e in result.episodes if e.video), None)
    res = QuickstartResult(
        task=args.task,
        demos=store.n_episodes,
        demo_steps=store.n_steps,
        collect_s=collect_s,
        train_steps=train_steps,
        train_s=_train_seconds(run_dir),
        train_reused=train_reused,
        success_rate=result.success_rate,
        n_success=agg["n_success"],
        eval_episodes=result.n_episodes,
        eval_s=eval_s,
        mean_descent_steps=agg["mean_descent_steps"],
        latency_p50_ms=agg["latency_p50_ms"],
        latency_p99_ms=agg["latency_p99_ms"],
        energy_min=agg["energy_min"],
        energy_max=agg["energy_max"],
        checkpoint=str(run_dir / "checkpoints" / "last"),
        metrics=str(run_dir / "metrics.jsonl"),
        eval_json=str(out / "eval.json"),
        video=video,
    )
    write_json_atomic(out / "quickstart.json", res.to_dict())
    return res


def results_table(res: QuickstartResult) -> Any:
    """The quickstart's one summary table (rich)."""
    from rich.table import Table

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    table = Table(title=f"ebt-policy quickstart: {res.task}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("demonstrations", f"{res.demos} episodes, {res.demo_steps} steps")
    reused = " (reused)" if res.train_reused else ""
    table.add_row("training", f"{res.train_steps} steps in {res.train_s:.0f} s{reused}")
    table.add_row(
        "success rate",
        f"{res.success_rate:.0%} ({res.n_success}/{res.eval_episodes} episodes, "
        f"{res.eval_s:.0f} s)",
    )
    table.add_row("mean descent steps", fmt(res.mean_descent_steps, ".2f"))
    table.add_row(
        "chunk latency p50 / p99",
        f"{fmt(res.latency_p50_ms, '.2f')} / {fmt(res.latency_p99_ms, '.2f')} ms",
    )
    table.add_row("energy range", f"{fmt(res.energy_min, '.3f')} .. {fmt(res.energy_max, '.3f')}")
    table.add_row("checkpoint", res.checkpoint)
    table.add_row("training log", res.metrics)
    table.add_row("evaluation", res.eval_json)
    table.add_row("video", res.video or "(none)")
    return table


def main(argv: list[str]) -> int:
    """Entry point of `ebt-policy quickstart`."""
    from rich.console import Console

    from ebt_policy.cli import parse_flags

    args = parse_flags(QuickstartArgs, argv, "ebt-policy quickstart")
    console = Console()
    res = run_quickstart(args, console)
    console.print(results_table(res))
    return 0
