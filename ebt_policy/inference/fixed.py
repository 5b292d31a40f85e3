"""A fixed number of descent steps as one traced unit: captured in a CUDA graph
(:mod:`.cuda_graph`) or compiled whole, with the observation encoder, by ``torch.compile``
(:class:`CompiledChunk`).

A fixed-step descent has no data-dependent branch (no early stop), so the whole loop, not only
one step, can be one graph: one guard check and one launch per chunk instead of one per step.
Both keep the first step that produced NaN/Inf on the device and check it once at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ebt_policy.policies.ebt.descent import DescentResult, NonFiniteEnergyError

Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def run_fixed_steps(
    step: Step, context: Tensor, x0: Tensor, n_steps: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n_steps`` calls of ``step(context, x, v)`` from ``x0``, ``v = 0``. Returns the chunk,
    the last energy, the last gradient norm (per sample) and the first step with NaN/Inf as a
    0-d tensor (``n_steps``: none)."""
    x, v = x0, torch.zeros_like(x0)
    bad = torch.full((), n_steps, dtype=torch.long, device=x.device)
    e = g = x0  # replaced by the first step (n_steps >= 1)
    for i in range(n_steps):
        x, v, e, g = step(context, x, v)
        ok = torch.isfinite(e).all() & torch.isfinite(g).all()
        bad = torch.where((bad == n_steps) & ~ok, i, bad)
    return x, e, g.flatten(1).norm(dim=1).float(), bad


def fixed_result(
    x: Tensor, e: Tensor, gnorm: Tensor, bad: Tensor, n_steps: int, phase: str
) -> DescentResult:
    """The :class:`DescentResult` of :func:`run_fixed_steps`; raises on a NaN/Inf step (the one
    host sync)."""
    bad_step = int(bad)
    if bad_step < n_steps:
        raise NonFiniteEnergyError(bad_step, n_steps, phase)
    steps = torch.full(e.shape, n_steps, dtype=torch.long, device=e.device)
    return DescentResult(chunk=x, energy=e, steps=steps, grad_norm=gnorm)


class CompiledChunk:
    """A whole fixed-step chunk as one compiled graph (``torch.compile``, ``fullgraph``, static
    shapes: each new batch shape compiles once more): ``encode(obs)`` (the observation context),
    its rows repeated ``repeats`` times (best-of-K), then ``n_steps`` descent steps. One guard
    check and one call per chunk. ``step`` must be traceable whole (its gradient a
    ``torch.func`` transform, not ``torch.autograd.grad``). ``cpp_wrapper``: inductor's C++
    wrapper (the kernels launched from C++, not Python).

    Dynamo keeps one cache for ``plan``'s code, shared by every engine in the process, and by
    default recompiles at most 8 times for it (each batch shape is one); past that it runs
    ``plan`` eagerly (same results, slower)."""

    def __init__(
        self,
        encode: Callable[[dict[str, Tensor]], Tensor],
        step: Step,
        n_steps: int,
        repeats: int = 1,
        cpp_wrapper: bool = False,
    ) -> None:
        self.n_steps = int(n_steps)
        self.cpp_wrapper = cpp_wrapper

        def plan(obs: dict[str, Tensor], x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            context = encode(obs)
            if repeats > 1:  # (B*K, ...): a row's K candidates are adjacent
                context = context.repeat_interleave(repeats, dim=0)
            return run_fixed_steps(step, context, x0, self.n_steps)

        options = {"cpp_wrapper": cpp_wrapper}
        self._plan = torch.compile(plan, fullgraph=True, dynamic=False, options=options)

    def __call__(self, obs: dict[str, Tensor], x0: Tensor) -> DescentResult:
        with torch.no_grad():
            x, e, gnorm, bad = self._plan(obs, x0)
        return fixed_result(x, e, gnorm, bad, self.n_steps, "inference, compiled")
