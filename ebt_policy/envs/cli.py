"""`ebt-policy collect` and `ebt-policy eval`."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ebt_policy.envs.collect import CollectConfig, collect
from ebt_policy.envs.results import CollectSummary
from ebt_policy.errors import CheckpointError, ConfigError, Interrupted
from ebt_policy.utils import default_mujoco_gl, resolve_device
from ebt_policy.utils.paths import check_output_path


@dataclass
class CollectArgs(CollectConfig):
    """Collect scripted-expert demonstrations into an episode store (resumes an existing one)."""

    progress: bool = True
    """Show a progress bar with the success rate and steps/s."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)  # the CLI exits 128 + signum (143 for SIGTERM)


def collect_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy collect`."""
    from rich.console import Console

    from ebt_policy.cli import parse_flags

    cfg = parse_flags(CollectArgs, argv, "ebt-policy collect")
    check_output_path(cfg.out, "store", "--out")
    # SIGTERM stops like Ctrl-C: workers are shut down; every committed episode stays, and a
    # rerun resumes (a SIGKILL is safe too, it only skips the clean shutdown)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = collect(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    Console().print(summary_table(summary))
    if summary.n_episodes < cfg.episodes:
        print(
            f"error: stopped after {summary.attempts} attempts with {summary.n_episodes} of "
            f"{cfg.episodes} episodes (expert success rate {summary.success_rate:.1%}); "
            "rerun to continue or raise --max-attempts",
            file=sys.stderr,
        )
        return 1
    return 0


def summary_table(summary: CollectSummary) -> Any:
    """A rich Table of a :class:`~ebt_policy.envs.results.CollectSummary`."""
    from rich.table import Table

    table = Table(title=f"collect {summary.task} -> {Path(summary.out).name}")
    table.add_column("")
    table.add_column("value", justify="right")
    rate = "-" if not summary.attempts else f"{summary.success_rate:.1%}"
    rows = [
        ("episodes in store", f"{summary.n_episodes} / {summary.requested}"),
        ("steps in store", str(summary.n_steps)),
        ("episodes kept (this run)", str(summary.new_episodes)),
        ("attempts (this run)", str(summary.attempts)),
        ("expert success rate", rate),
        ("steps (this run)", str(summary.new_steps)),
        ("time", f"{summary.wall_time_s:.1f} s"),
        ("steps/s", "-" if not summary.new_steps else f"{summary.steps_per_s:.0f}"),
        ("resumed", "yes" if summary.resumed else "no"),
    ]
    if summary.coverages:
        rows.append(("mean max coverage", f"{np.mean(summary.coverages):.3f}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


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
    max_episode_steps: int | None = None
    """Stop episodes after this many steps (default: the task's episode cap)."""
    device: str = "cpu"
    """Torch device for the policy."""
    descent_steps: int | None = None
    """EBT inference: most energy-descent steps per chunk (default: the checkpoint's)."""
    descent_min_grad: float | None = None
    """EBT inference: stop a sample's descent once its gradient norm is below this (with
    --descent-steps 20: the adaptive mode; default: the checkpoint's)."""
    warm_start: bool = False
    """EBT inference: start each chunk's descent from the row's previous chunk shifted by the
    executed actions (noise at an episode's start)."""
    best_of: int = 1
    """EBT inference: descend from K initialisations per row, keep the lowest final energy."""
    reject_uphill: bool = False
    """EBT inference: a chunk whose energy rises after a step stops there and keeps the
    lowest-energy point it reached."""
    min_energy_change: float = 0.0
    """EBT inference: also stop a sample's descent once a step changes its energy by less than
    this fraction (|dE| / |E|; 0: off; with --descent-steps 20, an adaptive rule)."""
    compile: bool = False
    """EBT inference: torch.compile the planner (a fixed-step chunk as one graph; compiles once
    per batch size, seconds to minutes)."""
    cpp_wrapper: bool = False
    """EBT inference, with --compile: launch the compiled chunk from C++ (faster small models,
    a longer first compile)."""
    sampler: Literal["ddpm", "ddim"] | None = None
    """Diffusion policies: sample chunks with DDPM or DDIM (default: the checkpoint's)."""
    sampler_steps: int | None = None
    """Diffusion policies: denoising steps per chunk (default: 100 for DDPM, 10 for DDIM)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.cpp_wrapper and not self.compile:
            raise ConfigError("--cpp-wrapper: needs --compile")


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
        ("mean descent steps", fmt(agg["mean_descent_steps"], ".2f")),
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
    from rich.console import Console

    from ebt_policy.cli import parse_flags

    args = parse_flags(EvalArgs, argv, "ebt-policy eval")
    # everything that can be refused is refused before the checkpoint loads and the envs start
    device = resolve_device(args.device)
    check_output_path(args.json, "file", "--json")
    check_output_path(args.videos, "dir", "--videos")
    default_mujoco_gl()
    from ebt_policy import load_policy
    from ebt_policy.envs import get_task
    from ebt_policy.envs.runner import EvalConfig, evaluate

    if args.task is not None:
        get_task(args.task)  # TaskError naming the known tasks
    policy = load_policy(args.checkpoint, device=device)
    if args.descent_steps is not None or args.descent_min_grad is not None:
        if not hasattr(policy, "set_inference"):
            raise ConfigError(
                f"{args.checkpoint}: --descent-steps/--descent-min-grad apply to energy policies"
            )
        policy.set_inference(
            descent_steps=args.descent_steps, descent_min_grad=args.descent_min_grad
        )
    engine_flags = (args.warm_start, args.best_of != 1, args.reject_uphill, args.compile)
    if any(engine_flags) or args.min_energy_change != 0.0:
        if not hasattr(policy, "set_engine"):
            raise ConfigError(
                f"{args.checkpoint}: --warm-start/--best-of/--reject-uphill/--min-energy-change/"
                "--compile apply to EBT policies"
            )
        policy.set_engine(
            warm_start=args.warm_start, best_of=args.best_of, reject_uphill=args.reject_uphill,
            min_energy_change=args.min_energy_change, compile=args.compile,
            cpp_wrapper=args.cpp_wrapper,
        )  # fmt: skip
    if args.sampler is not None or args.sampler_steps is not None:
        if not hasattr(policy, "set_sampler"):
            raise ConfigError(
                f"{args.checkpoint}: --sampler/--sampler-steps apply to diffusion policies"
            )
        policy.set_sampler(args.sampler, args.sampler_steps)
    metadata = checkpoint_metadata(args.checkpoint)
    if args.task is None and metadata is None:
        raise CheckpointError(
            f"{args.checkpoint}: no dataset metadata with a task found; pass --task"
        )
    if args.task is not None and metadata is not None and metadata["task"].get("name") != args.task:
        metadata = None  # a different task than the training data: build it from its name
    config = EvalConfig(
        task=args.task if metadata is None else None,
        metadata=metadata,
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        video_dir=args.videos,
        n_videos=args.n_videos,
        max_episode_steps=args.max_episode_steps,
        json_path=args.json,
        progress=True,
    )
    result = evaluate(policy, config)
    Console().print(result_table(result))
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0
