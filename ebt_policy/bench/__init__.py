"""Benchmarks: ``ebt-policy bench latency`` (per-chunk planning latency of EBT against the
baselines at the same preset)."""

from __future__ import annotations

from ebt_policy.bench.latency import LatencyConfig, LatencyResult, run_latency

__all__ = ["LatencyConfig", "LatencyResult", "run_latency"]
