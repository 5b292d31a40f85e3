"""`ebt-policy collect` and `ebt-policy eval`."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebt_policy.errors import CheckpointError, ConfigError


@dataclass
class CollectArgs:
    """Collect scripted-expert demonstrations into an episode store (resumes an existing one)."""

    task: str
    """Task name (see ebt_policy.envs.list_tasks())."""
    episodes: int
    """Successful episodes the store should hold at the end."""
    out: Path
    """Episode store path (.zarr); rerunning with the same path continues it."""
    seed: int = 0
    """Env seed of the first attempt; attempt i uses seed + i."""
    images: bool = False
    """Also record the task's cameras (uint8 images, --render-size pixels)."""
    render_size: int = 84
    """Camera image size in pixels."""
    workers: int = 1
    """Processes playing episodes."""
    keep_failures: bool = False
    """Also store unsuccessful episodes."""
    max_steps: int | None = None
    """End episodes after this many steps (default: the task's horizon)."""
    max_attempts: int | None = None
    """Give up after this many attempts (default 3 * needed + 20)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.render_size < 8:
            raise ConfigError(f"--render-size must be >= 8, got {self.render_size}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def collect_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy collect`."""
    import tyro
    from rich.console import Console

    from ebt_policy.envs.collect import collect, summary_table

    args = tyro.cli(CollectArgs, args=argv, prog="ebt-policy collect")
    # SIGTERM stops like Ctrl-C: workers are shut down; every committed episode stays, and a
    # rerun resumes (a SIGKILL is safe too, it only skips the clean shutdown)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = collect(
            task=args.task,
            episodes=args.episodes,
            out=args.out,
            seed=args.seed,
            images=args.images,
            workers=args.workers,
            keep_failures=args.keep_failures,
            render_size=args.render_size,
            max_steps=args.max_steps,
            max_attempts=args.max_attempts,
            progress=True,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    Console().print(summary_table(summary))
    if summary.n_episodes < args.episodes:
        print(
            f"error: stopped after {summary.attempts} attempts with {summary.n_episodes} of "
            f"{args.episodes} episodes (expert success rate {summary.success_rate:.1%}); "
            "rerun to continue or raise --max-attempts",
            file=sys.stderr,
        )
        return 1
    return 0


@dataclass
class EvalArgs:
    """Evaluate a checkpoint in simulation over seeded episodes."""

    checkpoint: Path
    """Run directory or checkpoint directory."""
    task: str | None = None
    """Task name (default: the task of the checkpoint's training dataset)."""
    episodes: int = 50
    """Episodes to run (episode i uses seed + i)."""
    seed: int = 100_000
    """Env seed of the first episode (the default stays clear of collection seeds)."""
    workers: int = 1
    """Env worker processes."""
    json: Path | None = None
    """Also write the full result (per episode and per chunk) as JSON here."""
    videos: Path | None = None
    """Write mp4 videos of the first --n-videos episodes into this directory."""
    n_videos: int = 1
    """How many videos to write with --videos."""
    max_steps: int | None = None
    """Stop episodes after this many steps (default: the task's horizon)."""
    device: str = "cpu"
    """Torch device for the policy."""
    descent_steps: int | None = None
    """EBT inference: most energy-descent steps per chunk (default: the checkpoint's)."""
    min_grad: float | None = None
    """EBT inference: stop a sample's descent once its gradient norm is below this (with
    --descent-steps 20: the adaptive mode; default: the checkpoint's)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


def checkpoint_metadata(checkpoint: Path) -> dict[str, Any] | None:
    """The training dataset's metadata saved in the checkpoint's config.json, if it has a task."""
    from ebt_policy.policies.checkpoint import read_checkpoint_config

    meta = read_checkpoint_config(checkpoint).get("dataset_metadata")
    if isinstance(meta, dict) and isinstance(meta.get("task"), dict):
        return meta
    return None


def result_table(result: Any) -> Any:
    """A rich Table summarising an :class:`~ebt_policy.envs.runner.EvalResult`."""
    from rich.table import Table

    agg = result.aggregates()
    table = Table(title=f"eval {result.policy} on {result.task}")
    table.add_column("")
    table.add_column("value", justify="right")

    def fmt(value: Any, spec: str = "") -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        ("episodes", str(agg["n_episodes"])),
        ("success rate", f"{agg['success_rate']:.1%} ({agg['n_success']}/{agg['n_episodes']})"),
        ("mean coverage", fmt(agg["mean_coverage"], ".3f")),
        ("mean episode length", fmt(agg["mean_length"], ".1f")),
        ("chunks planned", str(agg["n_chunks"])),
        ("mean descent steps", fmt(agg["mean_steps"], ".2f")),
        (
            "latency p50 / p99 (ms)",
            f"{fmt(agg['latency_p50_ms'], '.2f')} / {fmt(agg['latency_p99_ms'], '.2f')}",
        ),
        ("energy min / max", f"{fmt(agg['energy_min'], '.4f')} / {fmt(agg['energy_max'], '.4f')}"),
        ("env steps/s", fmt(agg["env_steps_per_s"], ".0f")),
        ("wall time (s)", fmt(agg["wall_time_s"], ".1f")),
        ("seeds", f"{result.seed} .. {result.seed + agg['n_episodes'] - 1}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def eval_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy eval`."""
    import tyro
    from rich.console import Console

    args = tyro.cli(EvalArgs, args=argv, prog="ebt-policy eval")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from ebt_policy import load_policy
    from ebt_policy.envs.runner import evaluate

    policy = load_policy(args.checkpoint, device=args.device)
    if args.descent_steps is not None or args.min_grad is not None:
        if not hasattr(policy, "set_inference"):
            raise ConfigError(
                f"{args.checkpoint}: --descent-steps/--min-grad apply to energy policies only"
            )
        policy.set_inference(descent_steps=args.descent_steps, descent_min_grad=args.min_grad)
    metadata = checkpoint_metadata(args.checkpoint)
    if args.task is None and metadata is None:
        raise CheckpointError(
            f"{args.checkpoint}: no dataset metadata with a task found; pass --task"
        )
    if args.task is not None and metadata is not None and metadata["task"].get("name") != args.task:
        metadata = None  # a different task than the training data: build it from its name
    result = evaluate(
        policy,
        task=args.task if metadata is None else None,
        metadata=metadata,
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        video_dir=args.videos,
        n_videos=args.n_videos,
        max_steps=args.max_steps,
        json_path=args.json,
        progress=True,
    )
    Console().print(result_table(result))
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0
