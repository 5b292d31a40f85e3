"""A fixed-step energy descent captured once in a CUDA graph and replayed per chunk.

Following the recipe of ``torch.cuda.graphs`` (PyTorch's "CUDA Graphs" notes): the inputs live in
static buffers that each call copies into; the work is run a few times on a side stream first
(autograd and cuDNN/cuBLAS set up their workspaces there, outside the capture); then one
``torch.cuda.graph`` capture records all ``n_steps`` steps (forward, the gradient w.r.t. the chunk
and the update) and ``replay()`` re-launches them with one call. A graph cannot branch on data,
so it runs exactly ``n_steps`` steps for every row (the engine uses it only for a fixed rule).
One graph per batch shape; its outputs are static buffers, copied out before returning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebt_policy.inference.fixed import Step, fixed_result, run_fixed_steps
from ebt_policy.policies.ebt.descent import DescentResult

WARMUP_RUNS = 3  # side-stream runs before the capture, as the CUDA Graphs notes do


class GraphedDescent:
    """``n_steps`` calls of ``step(context, x, v)`` from ``x0`` with ``v = 0``, as one graph.

    Built from example ``context`` and ``x0`` tensors (their shapes, dtypes and device are the
    graph's); calling it with new tensors of those shapes replays the graph.
    """

    def __init__(self, step: Step, context: Tensor, x0: Tensor, n_steps: int) -> None:
        if context.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs CUDA tensors, got {context.device}")
        self.step = step
        self.n_steps = int(n_steps)
        self.context = context.detach().clone()  # static inputs: each call copies into these
        self.x0 = x0.detach().clone()
        side = torch.cuda.Stream(device=context.device)
        side.wait_stream(torch.cuda.current_stream(context.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._run()
        torch.cuda.current_stream(context.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._run()  # static outputs, rewritten by every replay

    def _run(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():  # only the step's own gradient w.r.t. the chunk is recorded
            return run_fixed_steps(self.step, self.context, self.x0, self.n_steps)

    def __call__(self, context: Tensor, x0: Tensor) -> DescentResult:
        """Replay on ``context`` and ``x0`` (the capture's shapes); the results are copies."""
        self.context.copy_(context)
        self.x0.copy_(x0)
        self.graph.replay()
        x, e, gnorm, bad = (t.clone() for t in self.out)
        return fixed_result(x, e, gnorm, bad, self.n_steps, "inference, CUDA graph")
