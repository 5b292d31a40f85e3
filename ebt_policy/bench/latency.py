"""Per-chunk latency of EBT and the baselines at one preset, measured side by side.

Every variant plans from the same observation batch; calls are interleaved round-robin (the
variant order rotates every round) so that a slow phase of the machine (another process, thermal
throttling) hits every variant alike. Weights are random: step counts are fixed, so latency does
not depend on training, except for EBT's adaptive mode, whose stopping depends on the gradient
norms (the result reports the mean steps it used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gc
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ebt_policy.errors import ConfigError

ADAPTIVE = (20, 1e-3)  # EBT's adaptive mode: at most 20 descent steps, stop at |grad| < 1e-3
ADAPTIVE_LABEL = f"EBT adaptive {ADAPTIVE[0]}:{ADAPTIVE[1]:.0e}".replace("e-0", "e-")


@dataclass
class LatencyConfig:
    """What `ebt-policy bench latency` measures."""

    preset: str = "tiny"
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 32)
    calls: int = 200  # timed calls per variant and batch size
    warmup: int = 10  # untimed calls per variant first
    obs_dim: int = 19  # Lift's low-dim observation size
    action_dim: int = 7
    threads: int | None = None  # torch CPU threads (None: torch's default)
    engine: bool = False  # also time the inference engine's options (EBT rows only)
    compile: bool = False  # torch.compile rows: EBT (with engine) and the baselines (minutes)
    gc_off: bool = False  # collect, freeze and disable Python's GC while timing (p99 study)
    # fnmatch patterns over the variant labels: time only the matching rows (the EBT row at the
    # preset's steps is always kept: it is every ratio's reference). Empty: every row.
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calls < 1 or self.warmup < 0:
            raise ConfigError(
                f"calls must be >= 1 and warmup >= 0, got {self.calls}, {self.warmup}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if self.obs_dim < 1 or self.action_dim < 1:
            raise ConfigError(
                f"obs_dim and action_dim must be >= 1, got {self.obs_dim}, {self.action_dim}"
            )


@dataclass
class VariantTiming:
    """Latency of one variant at one batch size, in milliseconds."""

    variant: str
    policy: str
    batch: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    steps: float  # mean descent / denoising steps per chunk
    n_parameters: int
    ratio_to_ebt: float | None = None  # this variant's p50 / EBT's (preset steps) p50
    gflop: float | None = None  # per chunk (per batch row), FlopCounterMode on the torch path
    gflops: float | None = None  # achieved: FLOPs of one call / its p50 time


@dataclass
class LatencyResult:
    config: LatencyConfig
    timings: list[VariantTiming]
    skipped: list[str]  # variants without the preset, and why
    machine: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "latency",
            "random_weights": self.random_weights,
            "config": dataclasses.asdict(self.config),
            "machine": self.machine,
            "timings": [dataclasses.asdict(t) for t in self.timings],
            "skipped": self.skipped,
        }


def _shape_meta_and_stats(cfg: LatencyConfig) -> tuple[dict, dict]:
    meta = {"obs": {"state": {"shape": [cfg.obs_dim], "type": "low_dim"}},
            "action": {"shape": [cfg.action_dim]}}  # fmt: skip
    stats = {}
    for key, d in (("state", cfg.obs_dim), ("action", cfg.action_dim)):
        lo, hi = -np.ones(d, np.float32), np.ones(d, np.float32)
        stats[key] = {"min": lo, "max": hi, "mean": 0 * lo, "std": hi, "q01": lo, "q99": hi}
    return meta, stats


@dataclass
class Variant:
    """One way of planning a chunk: a policy and its sampler or stopping rule."""

    label: str
    policy: str
    plan: Callable[[dict[str, np.ndarray]], Any]  # obs window -> ChunkPrediction
    n_parameters: int
    flops_like: str | None = None  # count FLOPs on this (torch) variant's plan instead


def build_variants(cfg: LatencyConfig) -> tuple[list[Variant], list[str]]:
    """The variants of the comparison (EBT first) and the ones skipped, with the reason."""
    from ebt_policy.policies import get_preset, make_policy, make_policy_config

    meta, stats = _shape_meta_and_stats(cfg)
    variants: list[Variant] = []
    compiled: list[Variant] = []  # --compile: the baselines with compiled networks
    skipped: list[str] = []

    def build(name: str, **overrides: Any) -> Any:
        torch.manual_seed(0)
        policy = make_policy(make_policy_config(name, cfg.preset, **overrides), meta, stats)
        return policy.to(cfg.device).eval()

    def n_params(policy: Any) -> int:
        return sum(p.numel() for p in policy.parameters())

    get_preset("ebt", cfg.preset)  # ConfigError naming the preset if EBT lacks it
    ebt = build("ebt")
    k = ebt.config.descent.descent_steps
    variants.append(Variant(f"EBT ({k} steps)", "ebt", ebt.predict_chunk, n_params(ebt)))
    steps, min_grad = ADAPTIVE
    variants.append(Variant(
        ADAPTIVE_LABEL, "ebt",
        lambda obs: ebt.predict_chunk(obs, descent_steps=steps, descent_min_grad=min_grad),
        n_params(ebt),
    ))  # fmt: skip
    for name, short in (("diffusion", "DP-T"), ("diffusion-unet", "DP-UNet")):
        try:
            preset = get_preset(name, cfg.preset)
        except ConfigError:
            skipped.append(f"{short} ({name}): no preset {cfg.preset!r}")
            continue
        if getattr(preset.policy, "denoiser", None) == "mlp":
            short = "DP-MLP"  # the mlp preset's denoiser is an MLP, not a transformer
        for sampler, n in (("ddpm", 100), ("ddim", 10)):
            schedule = {"sampler": sampler, "sampler_steps": n}
            policy = build(name, schedule=schedule)
            label = f"{short} {sampler.upper()}-{n}"
            variants.append(Variant(label, name, policy.predict_chunk, n_params(policy)))
            if cfg.compile and name == "diffusion":  # the transformer (or MLP) denoiser
                compiled.append(compiled_variant(label, name, build(name, schedule=schedule)))
    mse = build("mse")
    variants.append(Variant("MSE (1 pass)", "mse", mse.predict_chunk, n_params(mse)))
    if cfg.compile:
        variants += [*compiled, compiled_variant("MSE (1 pass)", "mse", build("mse"))]
    if cfg.engine:
        from ebt_policy.bench.engine_rows import engine_variants

        variants += engine_variants(cfg, lambda: build("ebt"), variants[0].label, skipped)
    return variants, skipped


def compiled_variant(label: str, name: str, policy: Any) -> Variant:
    """``policy`` (a fresh copy of row ``label``'s) with its network under ``torch.compile``, so
    compiled EBT has a like-for-like baseline: a diffusion policy compiles its denoiser (the
    sampler's loop and the scheduler stay eager Python, as in Diffusion Policy's own code), the
    regressor its whole forward. FLOPs are the eager row's (a compiled graph cannot run under
    the FLOP counter)."""
    from ebt_policy.bench.cli import COMPILED

    if name == "mse":
        policy.predict_normalized = torch.compile(policy.predict_normalized)
    else:
        policy.denoiser.forward = torch.compile(policy.denoiser.forward)
    n_params = sum(p.numel() for p in policy.parameters())
    return Variant(label + COMPILED, name, policy.predict_chunk, n_params, flops_like=label)


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, cores, torch version and threads (and the GPU name on CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device}  # fmt: skip
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def run_latency(cfg: LatencyConfig, progress: Callable[[str], None] | None = None) -> LatencyResult:
    """Measure every variant at every batch size (see the module docstring)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r}: CUDA is not available")
    variants, skipped = build_variants(cfg)
    counted = {v.label: v for v in variants}  # a kept row may count FLOPs on a dropped one
    variants = select_variants(variants, cfg.only)
    need = {v.flops_like or v.label for v in variants}
    rng = np.random.default_rng(0)
    timings: list[VariantTiming] = []
    for B in cfg.batch_sizes:
        state = rng.uniform(-1, 1, (B, 2, cfg.obs_dim)).astype(np.float32)
        obs = {"state": state}
        for variant in variants:
            for _ in range(cfg.warmup):
                variant.plan(obs)
        flops = {label: count_flops(counted[label].plan, obs) for label in need}
        times: list[list[float]] = [[] for _ in variants]
        steps: list[list[float]] = [[] for _ in variants]
        with _gc_paused(cfg.gc_off):
            for call in range(cfg.calls):
                if progress is not None and call % 20 == 0:
                    progress(f"batch {B}: round {call + 1} / {cfg.calls}")
                n = len(variants)
                for j in range(n):
                    i = (call + j) % n  # rotate the order every round
                    t0 = time.perf_counter()
                    pred = variants[i].plan(obs)  # returns numpy: the device has finished
                    times[i].append(time.perf_counter() - t0)
                    if pred.steps is not None:
                        steps[i].append(float(np.mean(pred.steps)))
        for variant, ts, st in zip(variants, times, steps, strict=True):
            ms = np.asarray(ts) * 1e3
            f = flops.get(variant.flops_like or variant.label)
            p50 = float(np.median(ms))
            timings.append(VariantTiming(
                variant=variant.label, policy=variant.policy, batch=B, p50_ms=p50,
                p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
                steps=float(np.mean(st)) if st else 1.0, n_parameters=variant.n_parameters,
                gflop=None if f is None else f / B / 1e9,
                gflops=None if f is None else f / (p50 / 1e3) / 1e9,
            ))  # fmt: skip
        ebt_p50 = timings[-len(variants)].p50_ms
        for t in timings[-len(variants) :]:
            t.ratio_to_ebt = t.p50_ms / ebt_p50
    return LatencyResult(cfg, timings, skipped, machine_info(cfg.device))


def select_variants(variants: list[Variant], patterns: tuple[str, ...]) -> list[Variant]:
    """The variants whose label matches one of ``patterns`` (fnmatch), the first (EBT at the
    preset's steps, every ratio's reference) always; a pattern that matches nothing is an error."""
    if not patterns:
        return variants
    labels = [v.label for v in variants]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(label, pattern) for label in labels):
            raise ConfigError(
                f"--only {pattern!r}: matches no variant; the variants are: {', '.join(labels)}"
            )
    return [variants[0]] + [
        v for v in variants[1:] if any(fnmatch.fnmatchcase(v.label, p) for p in patterns)
    ]


def count_flops(plan: Callable[[dict[str, np.ndarray]], Any], obs: dict[str, np.ndarray]) -> float:
    """FLOPs of one ``plan(obs)`` call (matmuls, convolutions, attention; forward and the
    gradient's backward), by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Its module tracker's backward hooks make autograd.grad w.r.t. a leaf (the chunk) raise
    # "A leaf node was passed to _will_engine_execute_node"; count everything under "Global".
    counter.mod_tracker = _NoModuleTracker()
    with counter:
        plan(obs)
    return float(counter.get_total_flops())


class _NoModuleTracker:
    """Stands in for FlopCounterMode's ModuleTracker: no hooks, one parent."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModuleTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@contextlib.contextmanager
def _gc_paused(paused: bool) -> Iterator[None]:
    """With ``paused``: collect, move everything to the permanent generation, disable the GC;
    restored afterwards."""
    if not paused:
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
