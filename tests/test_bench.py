"""`ebt-policy bench latency` end to end on the tiny presets, with few calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebt_policy.cli import main
from ebt_policy.errors import ConfigError
from ebt_policy.policies import get_preset

# the EBT row names follow the preset's inference steps
TINY_STEPS = get_preset("ebt", "tiny").policy.descent.descent_steps


def test_bench_latency_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--preset", "tiny", "--batch", "1,2", "--calls", "2"]
    assert main([*argv, "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "random weights" in printed and "DP-UNet DDIM-10" in printed
    result = json.loads(out.read_text())
    assert result["random_weights"] is True
    variants = [t["variant"] for t in result["timings"] if t["batch"] == 1]
    assert variants == [
        f"EBT ({TINY_STEPS} steps)", "EBT adaptive 20:1e-3", "DP-T DDPM-100", "DP-T DDIM-10",
        "DP-UNet DDPM-100", "DP-UNet DDIM-10", "MSE (1 pass)",
    ]  # fmt: skip
    by_name = {(t["variant"], t["batch"]): t for t in result["timings"]}
    assert by_name[(f"EBT ({TINY_STEPS} steps)", 2)]["ratio_to_ebt"] == 1.0
    assert by_name[("DP-T DDPM-100", 1)]["steps"] == 100.0
    assert all(t["p99_ms"] >= t["p50_ms"] > 0 for t in result["timings"])


def test_bench_latency_skips_a_policy_without_the_preset(tmp_path: Path) -> None:
    from ebt_policy.bench import LatencyConfig, run_latency

    result = run_latency(LatencyConfig(preset="mlp", batch_sizes=(1,), calls=1, warmup=0))
    assert any("diffusion-unet" in line for line in result.skipped)
    assert {t.policy for t in result.timings} == {"ebt", "diffusion", "mse"}
    from ebt_policy.bench.cli import parse_batch_sizes

    assert parse_batch_sizes("1,32") == (1, 32)
    with pytest.raises(ConfigError, match="--batch"):
        parse_batch_sizes("1,x")


def test_bench_latency_only_times_the_matching_rows_and_keeps_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--preset", "tiny", "--batch", "1", "--calls", "1", "--warmup", "0"]
    argv += ["--threads", "1", "--engine", "--only", "EBT best-of-*", "DP-T DDIM*"]
    assert main([*argv, "--json", str(out)]) == 0
    timings = json.loads(out.read_text())["timings"]
    assert [t["variant"] for t in timings] == [
        f"EBT ({TINY_STEPS} steps)", "DP-T DDIM-10", "EBT best-of-4", "EBT best-of-16",
    ]  # fmt: skip
    assert timings[0]["ratio_to_ebt"] == 1.0 and all(t["gflop"] > 0 for t in timings)
    assert main(["bench", "latency", "--preset", "tiny", "--calls", "1", "--only", "DDPM"]) == 2
    err = capsys.readouterr().err
    assert "--only 'DDPM': matches no variant" in err and "DP-T DDPM-100" in err


def test_target_lines_judge_the_engine_targets_on_this_runs_numbers() -> None:
    from ebt_policy.bench.cli import target_lines
    from ebt_policy.bench.latency import LatencyConfig, LatencyResult, VariantTiming

    def row(name: str, p50: float, p99: float, policy: str = "ebt") -> VariantTiming:
        return VariantTiming(name, policy, 1, p50, p99, p50, 2.0, 1, p50 / 100.0)

    rows = [
        row("EBT (2 steps)", 100.0, 150.0),
        row("EBT compiled (whole chunk)", 40.0, 90.0),
        row("EBT best-of-4", 10.0, 11.0),
        row("DP-T DDPM-100", 2400.0, 2600.0, "diffusion"),
        row("DP-T DDPM-100 compiled", 1200.0, 1300.0, "diffusion"),
    ]
    lines = target_lines(LatencyResult(LatencyConfig(preset="paper"), rows, []))
    both = (
        "EBT compiled (whole chunk) >= 55x faster than DP-T DDPM-100 compiled (batch 1): 30.0x MISS"
    )
    assert both in lines[3]
    assert "EBT (2 steps) >= 55x faster than eager DP-T DDPM-100 (batch 1): 24.0x MISS" in lines[1]
    assert "EBT compiled (whole chunk) >= 55x" in lines[2] and "60.0x PASS" in lines[2]
    # best-of-4 plans four candidates: not the fixed-chunk row the targets are about
    assert not any("best-of-4 >=" in line for line in lines)
    assert lines[-1].endswith("worst 2.25x (EBT compiled (whole chunk)) MISS")
    small = target_lines(LatencyResult(LatencyConfig(preset="small"), rows, []))
    assert "target (small, cpu): EBT (2 steps) chunk < 3 ms (batch 1): 100.00 ms MISS" in small
    assert not any("paper size" in line for line in small)


@pytest.mark.slow
def test_bench_latency_compiled_rows_include_compiled_baselines(tmp_path: Path) -> None:
    """--engine --compile: compiled EBT beside DP-T and MSE with compiled networks (like for
    like); each compiled baseline plans the same number of network evaluations."""
    from ebt_policy.bench import LatencyConfig, run_latency

    cfg = LatencyConfig(preset="tiny", batch_sizes=(1,), calls=2, warmup=1, threads=1,
                        engine=True, compile=True)  # fmt: skip
    result = run_latency(cfg)
    by_name = {t.variant: t for t in result.timings}
    for name in ("DP-T DDPM-100", "DP-T DDIM-10", "MSE (1 pass)"):
        compiled = by_name[name + " compiled"]
        assert compiled.steps == by_name[name].steps and compiled.gflop == by_name[name].gflop
    assert "EBT compiled (whole chunk)" in by_name
