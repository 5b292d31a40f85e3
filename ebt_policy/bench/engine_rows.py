"""The inference engine's rows of `ebt-policy bench latency --engine`: each option of
:class:`~ebt_policy.inference.EngineOptions` on its own, on the same EBT weights (every policy is
built from the same seed), plus the ONNX export planned by onnxruntime.

Warm-start rows plan with ``rows=`` so each batch row keeps its previous chunk from call to call
(the rollout executor's usage); with random weights their step counts say little about a trained
policy's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.policies.base import ChunkPrediction

ADAPTIVE = (20, 1e-3)


def _n_params(policy: Any) -> int:
    return sum(p.numel() for p in policy.parameters())


def engine_variants(cfg: Any, build: Callable[[], Any], eager_label: str, skipped: list[str]):
    """Variants for each engine option; ``build()`` makes a fresh EBT policy (same weights)."""
    from ebt_policy.bench.latency import ADAPTIVE_LABEL, Variant

    out: list[Variant] = []
    steps, min_grad = ADAPTIVE

    def add(
        label: str,
        plan_kwargs: dict | None = None,
        per_row: bool = False,
        flops_like: str | None = None,
        **options: Any,
    ):
        policy = build()
        policy.set_engine(**options)
        kwargs = dict(plan_kwargs or {})

        def plan(obs: dict[str, np.ndarray]) -> ChunkPrediction:
            rows = list(range(len(obs["state"]))) if per_row else None
            return policy.predict_chunk(obs, rows=rows, **kwargs)

        out.append(Variant(label, "ebt", plan, _n_params(policy), flops_like=flops_like))

    adaptive = {"descent_steps": steps, "descent_min_grad": min_grad}
    add("EBT params not frozen", freeze=False)
    add("EBT bf16 autocast", bf16=True)
    add("EBT warm start", per_row=True, warm_start=True)
    add("EBT adaptive, warm start", adaptive, per_row=True, warm_start=True)
    add("EBT adaptive, energy change 1e-2", adaptive, min_energy_change=1e-2)
    add("EBT best-of-4", best_of=4)
    add("EBT best-of-16", best_of=16)
    if cfg.compile:
        # FLOPs counted on the eager rows: a compiled graph cannot run under the FLOP counter
        add("EBT compiled (whole chunk)", flops_like=eager_label, compile=True)
        add("EBT compiled, C++ wrapper", flops_like=eager_label, compile=True, cpp_wrapper=True)
        add("EBT adaptive, compiled step", adaptive, flops_like=ADAPTIVE_LABEL, compile=True)
    if cfg.device.startswith("cuda"):
        add("EBT CUDA graph", cuda_graph=True)
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        skipped.append("EBT onnxruntime: the export extra is not installed")
    else:
        if cfg.device == "cpu":
            out.append(_onnx_variant(build(), eager_label, cfg.threads or 1))
        else:
            skipped.append("EBT onnxruntime: CPU rows only")
    return out


def _onnx_variant(policy: Any, eager_label: str, threads: int) -> Any:
    """onnxruntime planning from the export at each batch size (exported on first use, during
    the untimed warm-up); its FLOPs are the eager row's (the same graph)."""
    from ebt_policy.bench.latency import Variant
    from ebt_policy.inference.export import export_policy
    from ebt_policy.inference.onnx_runner import OnnxPlanner

    work = Path(tempfile.mkdtemp(prefix="ebt-bench-onnx-"))
    planners: dict[int, OnnxPlanner] = {}
    rng = np.random.default_rng(0)

    def plan(obs: dict[str, np.ndarray]) -> ChunkPrediction:
        B = len(obs["state"])
        if B not in planners:
            planners[B] = OnnxPlanner(export_policy(policy, work / f"b{B}", batch=B), threads)
        p = planners[B].plan(obs, rng=rng)
        return ChunkPrediction(actions=p.actions, chunk=p.chunk, energy=p.energy, steps=p.steps)

    return Variant("EBT onnxruntime", "ebt", plan, _n_params(policy), flops_like=eager_label)
