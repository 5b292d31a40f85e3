"""`ebt-policy bench latency` end to end on the tiny presets, with few calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebt_policy.cli import main
from ebt_policy.errors import ConfigError


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
        "EBT (2 steps)", "EBT adaptive 20:1e-3", "DP-T DDPM-100", "DP-T DDIM-10",
        "DP-UNet DDPM-100", "DP-UNet DDIM-10", "MSE (1 pass)",
    ]  # fmt: skip
    by_name = {(t["variant"], t["batch"]): t for t in result["timings"]}
    assert by_name[("EBT (2 steps)", 2)]["ratio_to_ebt"] == 1.0
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
