"""`ebt-policy bench latency` (per-chunk planning latency of EBT against the baselines) and
`ebt-policy bench suite` (every policy trained and evaluated on the same data and budget).

Usage::

    ebt-policy bench latency [--preset tiny] [--device cpu|cuda] [--batch 1,32] [--calls 200]
        [--warmup 10] [--threads N] [--json FILE] [--engine [--compile]] [--gc-off]
    ebt-policy bench suite --tasks lift,twogoal --policies ebt,mse --budget-steps N
        [--seeds 3] [--episodes 50] [--demos 100] [--preset P] [--out DIR] [--json FILE] ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebt_policy.errors import ConfigError

RANDOM_WEIGHTS_NOTE = (
    "random weights: latency only (fixed step counts; EBT's adaptive steps on a trained model "
    "may differ from the mean shown)"
)


@dataclass
class LatencyArgs:
    """Per-chunk latency of EBT, Diffusion Policy (transformer and U-Net) and MSE."""

    preset: str = "tiny"
    """Preset every policy is built with (a policy without it is skipped, and the table says so)."""
    device: str = "cpu"
    """Torch device: cpu or cuda (cuda:N)."""
    batch: str = "1,32"
    """Comma-separated batch sizes."""
    calls: int = 200
    """Timed calls per variant and batch size (median and p99 over these)."""
    warmup: int = 10
    """Untimed calls per variant before timing."""
    threads: int | None = None
    """Torch CPU threads (default: torch's)."""
    obs_dim: int = 19
    """Low-dim observation size (19: Lift)."""
    action_dim: int = 7
    json: Path | None = None
    """Also write the results here."""
    engine: bool = False
    """Also time the inference engine's options (bf16, warm start, best-of-K, onnxruntime...)."""
    compile: bool = False
    """With --engine: add torch.compile rows, the whole fixed-step chunk and the adaptive rule's
    step (each compiles once per batch size: minutes on a CPU)."""
    gc_off: bool = False
    """Collect, freeze and disable Python's garbage collector while timing."""


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> (1, 32) (ConfigError naming the flag otherwise)."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--batch: expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch: expected positive integers, got {text!r}")
    return sizes


def latency_table(result: Any) -> Any:
    """A rich Table of a :class:`~ebt_policy.bench.latency.LatencyResult`."""
    from rich.table import Table

    cfg, machine = result.config, result.machine
    table = Table(
        title=f"chunk latency, preset {cfg.preset!r}, {machine['device']} "
        f"({machine['threads']} threads), {cfg.calls} calls",
        caption=RANDOM_WEIGHTS_NOTE,
    )
    columns = ("variant", "batch", "steps", "params", "p50 ms", "p99 ms", "x EBT p50",
               "GFLOP/chunk", "GFLOP/s")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name == "variant" else "right", no_wrap=True)
    for t in result.timings:
        table.add_row(
            t.variant, str(t.batch), f"{t.steps:.1f}", f"{t.n_parameters / 1e6:.2f}M",
            f"{t.p50_ms:.2f}", f"{t.p99_ms:.2f}", f"{t.ratio_to_ebt:.1f}",
            "-" if t.gflop is None else f"{t.gflop:.3f}",
            "-" if t.gflops is None else f"{t.gflops:.1f}",
        )  # fmt: skip
    return table


# Our targets: EBT's chunk at its preset's steps at most this fraction of each baseline's latency.
LATENCY_TARGETS = {"DDPM-100": 29.0, "DDIM-10": 3.0}


def target_lines(result: Any) -> list[str]:
    """One verdict per (diffusion variant, batch) with a target, from this run's ratios."""
    lines = []
    for t in result.timings:
        for suffix, want in LATENCY_TARGETS.items():
            if t.variant.endswith(suffix) and t.ratio_to_ebt is not None:
                verdict = "PASS" if t.ratio_to_ebt >= want else "MISS"
                lines.append(
                    f"target: EBT >= {want:g}x faster than {t.variant} (batch {t.batch}): "
                    f"{t.ratio_to_ebt:.1f}x {verdict}"
                )
    return lines


def latency_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy bench latency`."""
    import tyro
    from rich.console import Console

    from ebt_policy.bench.latency import LatencyConfig, run_latency
    from ebt_policy.utils import write_json_atomic

    args = tyro.cli(LatencyArgs, args=argv, prog="ebt-policy bench latency")
    cfg = LatencyConfig(
        preset=args.preset, device=args.device, batch_sizes=parse_batch_sizes(args.batch),
        calls=args.calls, warmup=args.warmup, obs_dim=args.obs_dim, action_dim=args.action_dim,
        threads=args.threads, engine=args.engine, compile=args.compile, gc_off=args.gc_off,
    )  # fmt: skip
    console = Console(stderr=True)
    with console.status("building policies") as status:
        result = run_latency(cfg, progress=lambda text: status.update(text))
    out = Console()
    out.print(latency_table(result))
    for line in target_lines(result):
        out.print(line)
    for line in result.skipped:
        out.print(f"skipped: {line}")
    out.print(f"machine: {result.machine['cpu']}, {result.machine['cores']} cores, "
              f"torch {result.machine['torch']}")  # fmt: skip
    if args.json is not None:
        write_json_atomic(args.json, result.to_dict())
        out.print(f"wrote {args.json}")
    return 0


def suite_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy bench suite`."""
    from rich.console import Console

    from ebt_policy.bench.suite import run_suite
    from ebt_policy.bench.suite_config import SuiteArgs
    from ebt_policy.bench.suite_report import rich_table
    from ebt_policy.cli import parse_flags

    args = parse_flags(SuiteArgs, argv, "ebt-policy bench suite")
    report = run_suite(args, argv)
    out = Console()
    out.print(rich_table(report))
    json_path = args.json if args.json is not None else args.out / "results.json"
    out.print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return 0
