"""The pure pieces of one energy-descent step, shared by training (:mod:`.descent`) and the
inference engine (:mod:`ebt_policy.inference`).

:func:`inference_step` is one first-order step as a function of ``(x, v)`` alone: with
:func:`autograd_energy_grad` it is the eager reference (bit for bit what
``EnergyDescent.step(training=False)`` computes), with :func:`func_energy_grad` the gradient is a
``torch.func`` transform, so ``torch.compile`` can trace the whole step into one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ebt_policy.policies.ebt.descent import DescentConfig

EnergyFn = Callable[[Tensor], Tensor]
# x_look (B, Tp, Da) -> (energy (B,) fp32, dE/dx_look (B, Tp, Da)): first order, no graph kept
GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]
# (x, v) -> (x_next, v_next, energy (B,), grad): one inference step
StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def rms_normalize(x: Tensor, mode: str, eps: float) -> Tensor:
    """Divide x (B, ...) by its RMS per sample (``"sample"``), over the batch (``"batch"``) or
    not at all (``"none"``)."""
    if mode == "none":
        return x
    dims = tuple(range(1, x.dim())) if mode == "sample" else tuple(range(x.dim()))
    rms = x.pow(2).mean(dim=dims, keepdim=True).add(eps).sqrt()
    return x / rms


def step_alpha(cfg: DescentConfig, e: Tensor) -> Tensor:
    """The per-sample step size (B,) of energies ``e`` (B,): alpha/T, times clamp(exp(E)) with
    the ``exp_energy`` step scale (bounded, so a drifting energy cannot explode it)."""
    if cfg.step_scale == "fixed":
        scale = torch.ones_like(e)
    else:
        scale = e.exp().clamp(cfg.exp_energy_min, cfg.exp_energy_max)
    return (cfg.alpha / cfg.temperature) * scale


def autograd_energy_grad(energy: EnergyFn) -> GradFn:
    """The energy and its gradient w.r.t. the chunk by ``torch.autograd.grad`` (eager; the
    reference path, and what a CUDA graph captures)."""

    def grad_fn(x_look: Tensor) -> tuple[Tensor, Tensor]:
        x_look = x_look.detach().requires_grad_(True)
        with torch.enable_grad():
            e = energy(x_look).float()  # (B,)
            (g,) = torch.autograd.grad(e.sum(), x_look)
        return e.detach(), g

    return grad_fn


def func_energy_grad(energy: EnergyFn) -> GradFn:
    """The same by ``torch.func.grad_and_value``: a pure function ``torch.compile`` traces whole
    (``torch.autograd.grad`` would break the graph)."""

    def summed(x_look: Tensor) -> tuple[Tensor, Tensor]:
        e = energy(x_look).float()  # (B,)
        return e.sum(), e

    grad_and_value = torch.func.grad_and_value(summed, has_aux=True)

    def grad_fn(x_look: Tensor) -> tuple[Tensor, Tensor]:
        g, (_, e) = grad_and_value(x_look)
        return e, g

    return grad_fn


def inference_step(
    grad_fn: GradFn, x: Tensor, v: Tensor, cfg: DescentConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One first-order inference step as a pure function of (x, v): the same arithmetic as
    :meth:`EnergyDescent.step` with ``training=False`` (no noise, no random step scale).

    Returns (x_next, v_next, energy (B,), grad (B, ...)).
    """
    x = rms_normalize(x.detach(), cfg.rms_norm, cfg.rms_eps)
    e, g = grad_fn(x + cfg.momentum * v)
    g = g.to(x.dtype)
    alpha = step_alpha(cfg, e).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1)
    v_next = cfg.momentum * v - alpha * g
    return x + v_next, v_next, e, g
