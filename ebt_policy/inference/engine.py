"""InferenceEngine: one object that plans EBT chunks for a policy on its device.

Per call (:meth:`InferenceEngine.plan`):

1. the observation context is computed once (``policy.encode``, no grad), repeated K times for
   best-of-K;
2. the initial chunks: per row, candidate 0 starts from ``init_chunk`` or (warm start) the row's
   previous chunk shifted by the executed actions plus a little noise, the other candidates (and
   rows without a previous chunk) from N(0, I) drawn from the row's own generator;
3. the descent: the policy's :class:`~ebt_policy.policies.ebt.EnergyDescent` loop with its
   stopping rule, each step the pure :func:`~ebt_policy.policies.ebt.step.inference_step`
   (eager, or compiled); a fixed-step rule compiled whole (all steps one graph), or on CUDA
   captured in a CUDA graph;
4. per row the candidate with the lowest final energy is kept and remembered for the next warm
   start.

The engine runs the descent; it does not define it. With the default options it plans exactly
what the eager reference plans (the golden-actions test).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ebt_policy.errors import EbtPolicyError
from ebt_policy.inference.cuda_graph import GraphedDescent
from ebt_policy.inference.fixed import CompiledChunk
from ebt_policy.inference.options import EngineOptions, check_bf16
from ebt_policy.policies.ebt.descent import DescentResult
from ebt_policy.policies.ebt.step import autograd_energy_grad, func_energy_grad, inference_step


class InferenceEngine:
    """Plans chunks for ``policy`` (an :class:`~ebt_policy.policies.EBTPolicy`) with ``options``.

    The engine keeps per-row warm-start state; :meth:`reset` forgets all of it and
    :meth:`forget` one row's (the policy's ``reset`` / ``start_episode`` call these).
    ``last_path`` says how the last call descended: ``"eager"``, ``"compiled"`` (the compiled
    step, in the Python loop of an adaptive rule), ``"compiled_chunk"`` (a fixed rule: all steps
    one compiled graph) or ``"cuda_graph"``.
    """

    def __init__(self, policy: Any, options: EngineOptions | None = None) -> None:
        self.policy = policy
        self.options = options or EngineOptions()
        if self.options.bf16:
            check_bf16(policy.device.type)
        self._warm: dict[int, Tensor] = {}  # row -> previous chunk (Tp, Da), normalised
        self._advance: dict[int, int] = {}  # row -> the next warm start's shift (once)
        self._compiled: Any = None  # the compiled step (adaptive rules)
        self._compiled_chunks: dict[tuple, CompiledChunk] = {}  # fixed rules: encoder + loop
        self._compiled_encode: Any = None
        self._graphs: dict[tuple, GraphedDescent] = {}
        self._params: list[Tensor] | None = None  # the policy's parameters, listed once
        self.last_path = "eager"

    def __deepcopy__(self, memo: dict) -> InferenceEngine:
        """A fresh engine for the copied policy (compiled code and graphs are not copied)."""
        policy = memo.get(id(self.policy), self.policy)
        return InferenceEngine(policy, copy.deepcopy(self.options, memo))

    # ------------------------------------------------------------------ per-row state
    def reset(self) -> None:
        """Forget every row's previous chunk: the next plans start from noise."""
        self._warm.clear()
        self._advance.clear()

    def forget(self, row: int) -> None:
        """Forget ``row``'s previous chunk (a new episode starts there)."""
        self._warm.pop(int(row), None)
        self._advance.pop(int(row), None)

    def advance(self, row: int, n_actions: int) -> None:
        """``row``'s next warm start shifts its previous chunk by ``n_actions`` (the control
        steps between the newest frames of the two plans) instead of ``warm_shift`` / Ta: for a
        loop that plans on a clock, as the deploy loop does. Used by that one plan."""
        if n_actions < 0:
            raise EbtPolicyError(f"advance: n_actions must be >= 0, got {n_actions}")
        self._advance[int(row)] = int(n_actions)

    def has_warm_start(self, row: int) -> bool:
        """Whether ``row``'s next plan starts from its previous chunk."""
        return self.options.warm_start and int(row) in self._warm

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        obs: dict[str, Tensor],
        *,
        rows: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        init_chunk: Tensor | Any | None = None,
        descent_steps: int | None = None,
        descent_min_grad: float | None = None,
    ) -> DescentResult:
        """One chunk per batch row from checked observation tensors (``policy.obs_tensors``).

        ``rows[b]`` is batch element b's row (None: row b); with ``generator=None`` each row
        draws its noise from the generator ``policy.start_episode`` gave it. Returns the kept
        candidate's normalised chunk (B, Tp, Da), final energy, steps and gradient norm.
        """
        policy, opts = self.policy, self.options
        B = next(iter(obs.values())).shape[0]
        row_ids = list(range(B)) if rows is None else [int(r) for r in rows]
        if len(row_ids) != B:
            raise EbtPolicyError(
                f"rows has {len(row_ids)} entries but the observation batch is {B}"
            )
        K = opts.best_of
        n, min_grad, fixed = self._rule(descent_steps, descent_min_grad)
        nobs = policy._normalize_obs(obs)
        # the initial draws do not depend on the context, so they may come first
        x0 = self._initial_chunks(B, row_ids, rows is not None, generator, init_chunk)
        graphed = opts.cuda_graph and policy.device.type == "cuda"
        if opts.compile and fixed and not graphed:
            # the encoder and the whole fixed-step loop as one compiled graph
            self.last_path = "compiled_chunk"
            with self._frozen():
                result = self._compiled_chunk(n, K)(nobs, x0)
        else:
            with torch.no_grad(), self._autocast():
                context = self._encode(nobs)
            if K > 1:
                # (B*K, ...): a row's K candidates are adjacent
                context = context.repeat_interleave(K, dim=0)
            with self._frozen():
                result = self._descend(context, x0, n, min_grad, fixed)
        if K > 1:
            best = result.energy.view(B, K).argmin(dim=1)  # (B,)
            idx = torch.arange(B, device=best.device) * K + best
            cands = result.chunk.detach().float().view(B, K, *result.chunk.shape[1:])
            spread = (cands - cands.mean(dim=1, keepdim=True)).pow(2).mean(dim=(1, 2, 3)).sqrt()
            result = DescentResult(
                chunk=result.chunk[idx], energy=result.energy[idx], steps=result.steps[idx],
                grad_norm=result.grad_norm[idx], spread=spread,
            )  # fmt: skip
        if opts.warm_start:
            for b, row in enumerate(row_ids):
                self._warm[row] = result.chunk[b].detach().clone()
        return result

    def _encode(self, obs: dict[str, Tensor]) -> Tensor:
        if not self.options.compile:
            return self.policy.encode(obs, augment=False)
        if self._compiled_encode is None:
            policy = self.policy
            self._compiled_encode = torch.compile(
                lambda o: policy.encode(o, augment=False), dynamic=False
            )
        return self._compiled_encode(obs)

    def _rule(self, steps: int | None, min_grad: float | None) -> tuple[int, float, bool]:
        """The step cap, the gradient-norm stop, and whether the rule is a fixed step count."""
        cfg, opts = self.policy.descent.config, self.options
        n = cfg.descent_steps if steps is None else steps
        min_grad = cfg.descent_min_grad if min_grad is None else min_grad
        # every rule but the cap needs a host decision per step; a captured graph cannot stop
        fixed = n <= 2 or (min_grad <= 0 and cfg.descent_min_disp <= 0)
        fixed = fixed and opts.min_energy_change <= 0 and not opts.reject_uphill
        return n, min_grad, fixed

    def _compiled_chunk(self, n: int, K: int) -> CompiledChunk:
        policy = self.policy
        # the config's values, not its identity: set_inference makes a new config object with
        # every call (the deploy loop's energy re-plans do, twice per re-plan)
        key = (n, K, repr(policy.descent.config), policy.training)
        chunk = self._compiled_chunks.get(key)
        if chunk is None:
            autocast = self._autocast

            def encode(obs: dict[str, Tensor]) -> Tensor:
                with autocast():
                    return policy.encode(obs, augment=False)

            step = self._step_impl(func_energy_grad)
            chunk = self._compiled_chunks[key] = CompiledChunk(
                encode, step, n, K, cpp_wrapper=self.options.cpp_wrapper
            )
        return chunk

    def _descend(
        self, context: Tensor, x0: Tensor, n: int, min_grad: float, fixed: bool
    ) -> DescentResult:
        policy, opts = self.policy, self.options
        descent = policy.descent
        cfg = descent.config
        if opts.cuda_graph and context.device.type == "cuda" and fixed:
            self.last_path = "cuda_graph"
            key = (tuple(context.shape), context.dtype, tuple(x0.shape), n, id(cfg))
            graph = self._graphs.get(key)
            if graph is None:
                step = self._step_impl(autograd_energy_grad)
                graph = self._graphs[key] = GraphedDescent(step, context, x0, n)
            return graph(context, x0)
        if opts.compile:
            self.last_path = "compiled"
            if self._compiled is None:
                self._compiled = torch.compile(self._step_impl(func_energy_grad))
            compiled = self._compiled
            step_fn = lambda x, v: compiled(context, x, v)  # noqa: E731
        else:
            self.last_path = "eager"
            eager = self._step_impl(autograd_energy_grad)
            step_fn = lambda x, v: eager(context, x, v)  # noqa: E731
        return descent.infer(
            None, x0, n, min_grad, min_energy_change=opts.min_energy_change,
            reject_uphill=opts.reject_uphill, step_fn=step_fn,
        )  # fmt: skip

    def _step_impl(self, make_grad: Any) -> Any:
        """``step(context, x, v) -> (x_next, v_next, e, g)``: a pure function of its tensors."""
        policy = self.policy
        cfg = policy.descent.config
        fused = policy.config.fused_attention_inference
        autocast = self._autocast

        def step(context: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            def energy(chunk: Tensor) -> Tensor:
                with autocast():
                    return policy.energy(context, chunk, fused=fused)

            return inference_step(make_grad(energy), x, v, cfg)

        return step

    # ------------------------------------------------------------------ initial chunks
    def _initial_chunks(
        self,
        B: int,
        row_ids: list[int],
        per_row: bool,
        generator: torch.Generator | None,
        init_chunk: Any,
    ) -> Tensor:
        """(B*K, Tp, Da): candidate 0 from ``init_chunk`` / the warm start where there is one,
        the rest N(0, I). For K = 1 and a cold start these are the very draws of the reference
        (one (Tp, Da) draw per row from its generator, or one (B, Tp, Da) draw)."""
        policy, opts = self.policy, self.options
        K, shape, dev = opts.best_of, (policy.horizon, policy.action_dim), policy.device
        given = None
        if init_chunk is not None:
            given = torch.as_tensor(init_chunk, dtype=torch.float32, device=dev)
            if given.shape != (B, *shape):
                raise EbtPolicyError(
                    f"init_chunk has shape {tuple(given.shape)}; expected "
                    f"({B}, {shape[0]}, {shape[1]})"
                )
            if K == 1:
                return given  # no draws: the generators stay where they were
        if generator is not None or not per_row:
            noise = torch.randn((B, K, *shape), device=dev, generator=generator)
        else:
            gens = policy._row_generators
            noise = torch.stack([torch.randn((K, *shape), generator=gens.get(r)) for r in row_ids])
            noise = noise.to(dev)  # (B, K, Tp, Da)
        if given is not None:
            noise[:, 0] = given
        elif opts.warm_start:
            for b, row in enumerate(row_ids):
                prev = self._warm.get(row)
                shift = self._advance.pop(row, self._shift())
                if prev is not None:
                    noise[b, 0] = shift_chunk(prev.to(dev), shift) + (opts.warm_noise * noise[b, 0])
        return noise.view(B * K, *shape)

    def _shift(self) -> int:
        return self.options.warm_shift or int(self.policy.n_action_steps)

    # ------------------------------------------------------------------ contexts
    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.options.bf16:
            return contextlib.nullcontext()
        # no weight cache: a CUDA graph capture must not keep casts made outside it
        return torch.autocast(self.policy.device.type, dtype=torch.bfloat16, cache_enabled=False)

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """Parameters without gradients while planning; their flags restored afterwards (the
        policy may be trained again)."""
        if not self.options.freeze:
            yield
            return
        if self._params is None:  # walking the module tree costs ~1 ms per chunk at `small`
            self._params = list(self.policy.parameters())
        params = [p for p in self._params if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


def shift_chunk(chunk: Tensor, shift: int) -> Tensor:
    """(Tp, Da) -> (Tp, Da): drop the first ``shift`` actions, repeat the last one at the end."""
    if shift <= 0:
        return chunk.clone()
    tail = chunk[-1:].expand(min(shift, chunk.shape[0]), -1)
    return torch.cat([chunk[shift:], tail], dim=0)
