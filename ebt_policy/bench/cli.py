"""`ebt-policy bench latency` (per-chunk planning latency of EBT against the baselines) and
`ebt-policy bench suite` (every policy trained and evaluated on the same data and budget).

Usage::

    ebt-policy bench latency [--preset tiny] [--device cpu|cuda] [--batch 1,32] [--calls 200]
        [--warmup 10] [--threads N] [--json FILE] [--engine [--compile]] [--gc-off]
        [--only PATTERN ...]
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
    """Add torch.compile rows: with --engine EBT's whole fixed-step chunk and the adaptive rule's
    step; always DP-T's denoiser (both samplers) and the MSE regressor, the like-for-like
    baselines (each compiles once per batch size: minutes on a CPU)."""
    gc_off: bool = False
    """Collect, freeze and disable Python's garbage collector while timing."""
    only: tuple[str, ...] = ()
    """Time only the variants whose label matches one of these patterns (fnmatch, e.g.
    'EBT compiled*' 'DP-T DDIM*'); EBT at the preset's steps is always kept (the ratios'
    reference)."""


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
# The inference engine's (batch 1): at the authors' size (`paper`) EBT >= 55x DP-T DDPM-100; the
# `small` chunk under 3 ms on a CPU; `paper` under 2 ms on a GPU; p99 within 2x of p50.
PAPER_DDPM_TARGET = 55.0
CHUNK_MS_TARGETS = {("small", "cpu"): 3.0, ("paper", "cuda"): 2.0}
P99_TARGET = 2.0
# Rows that plan one chunk with the preset's own steps from one start (the fastest one counts)
FIXED_CHUNK_ROWS = ("EBT (", "EBT compiled (whole chunk)", "EBT compiled, C++ wrapper",
                    "EBT onnxruntime", "EBT CUDA graph", "EBT params not frozen",
                    "EBT bf16 autocast")  # fmt: skip


COMPILED = " compiled"  # suffix of a baseline row whose network runs under torch.compile


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def target_lines(result: Any) -> list[str]:
    """One verdict per target that this run measured, from this run's numbers."""
    lines = []
    for t in result.timings:
        for suffix, want in LATENCY_TARGETS.items():
            if t.variant.endswith(suffix) and t.ratio_to_ebt is not None:
                lines.append(
                    f"target: EBT >= {want:g}x faster than {t.variant} (batch {t.batch}): "
                    f"{t.ratio_to_ebt:.1f}x {_verdict(t.ratio_to_ebt >= want)}"
                )
    batch1 = [t for t in result.timings if t.batch == 1]
    fixed = [t for t in batch1 if t.variant.startswith(FIXED_CHUNK_ROWS)]
    if not fixed:
        return lines
    exact, fastest = fixed[0], min(fixed, key=lambda t: t.p50_ms)
    judged = [exact] if fastest is exact else [exact, fastest]
    preset, device = result.config.preset, result.config.device.split(":")[0]
    ddpm = next((t for t in batch1 if t.variant == "DP-T DDPM-100"), None)
    if preset == "paper" and ddpm is not None:
        for t in judged:
            ratio = ddpm.p50_ms / t.p50_ms
            ok = _verdict(ratio >= PAPER_DDPM_TARGET)
            lines.append(
                f"target (paper size): {t.variant} >= {PAPER_DDPM_TARGET:g}x faster than "
                f"eager DP-T DDPM-100 (batch 1): {ratio:.1f}x {ok}"
            )
        # like for like: the fastest compiled EBT chunk against the compiled baseline
        ddpm_c = next((t for t in batch1 if t.variant == "DP-T DDPM-100" + COMPILED), None)
        compiled = [t for t in batch1 if t.variant.startswith("EBT compiled")]
        ebt_c = min(compiled, key=lambda t: t.p50_ms) if compiled else None
        if ddpm_c is not None and ebt_c is not None:
            ratio = ddpm_c.p50_ms / ebt_c.p50_ms
            lines.append(
                f"target (paper size, both compiled): {ebt_c.variant} >= {PAPER_DDPM_TARGET:g}x "
                f"faster than {ddpm_c.variant} (batch 1): {ratio:.1f}x "
                f"{_verdict(ratio >= PAPER_DDPM_TARGET)}"
            )
    want_ms = CHUNK_MS_TARGETS.get((preset, device))
    if want_ms is not None:
        for t in judged:
            lines.append(
                f"target ({preset}, {device}): {t.variant} chunk < {want_ms:g} ms (batch 1): "
                f"{t.p50_ms:.2f} ms {_verdict(t.p50_ms < want_ms)}"
            )
    worst = max(batch1, key=lambda t: t.p99_ms / t.p50_ms)
    ratio = worst.p99_ms / worst.p50_ms
    lines.append(
        f"target: p99 <= {P99_TARGET:g}x p50 on every row (batch 1): worst {ratio:.2f}x "
        f"({worst.variant}) {_verdict(ratio <= P99_TARGET)}"
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
        only=tuple(args.only),
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
