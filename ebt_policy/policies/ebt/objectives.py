"""Training objectives of the energy descent beyond the reference's per-step MSE (issue 11).

Why: with MSE every supervised iterate is a function of the observation and of noise that is
independent of which demonstrated mode the target is, so its optimum is the conditional mean
(method.md, last section). A proper scoring rule (the energy score) is minimised only when the
iterates are *distributed* like the demonstrations, and the Equilibrium-Matching term makes the
demonstrated chunks stationary points of the energy, so descending further keeps a plan there.
Both train only the energy's gradient; the ranking term (:func:`ranking_loss`) trains its level,
so that the final energy of a plan can rank plans and flag unfamiliar observations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

OBJECTIVES = ("mse", "energy_score")


def rms_distance(u: Tensor, beta: float = 1.0) -> Tensor:
    """(RMS over everything but the batch dim of u) ** beta, per sample: (B,)."""
    return (u.flatten(1).pow(2).mean(dim=1) + 1e-8).pow(beta / 2)  # eps: finite grad at 0


def energy_score(x: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Energy score of two chains ``x = cat([x1, x2])`` ((2B, Tp, Da)) against ``target`` (B, ...).

    ``d(x1, a) + d(x2, a) - d(x1, x2)`` averaged over the batch, ``d`` the RMS distance to the
    power beta in (0, 2): twice the sample estimate of E d(X, a) - E d(X, X') / 2, which is
    minimised in expectation only when X is distributed as the demonstrations.
    """
    B = target.shape[0]
    x1, x2, a = x[:B].float(), x[B:].float(), target.float()
    spread = rms_distance(x1 - x2, beta)  # the term that keeps two chains from collapsing
    return (rms_distance(x1 - a, beta) + rms_distance(x2 - a, beta) - spread).mean()


def step_loss(objective: str, x: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Loss of one descent iterate: ``mse`` (the reference) or ``energy_score`` (two chains)."""
    if objective == "mse":
        return torch.nn.functional.mse_loss(x.float(), target.float())
    return energy_score(x, target, beta)


def eqm_loss(
    energy: Callable[[Tensor], Tensor],
    target: Tensor,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Equilibrium Matching on the energy: at ``x_g = g a + (1 - g) eps`` (g ~ U(0, 1),
    eps ~ N(0, I)) match ``step_size * grad E(x_g)`` to ``x_g - a``.

    The ideal field is then ``step_size * grad E(x) = x - E[a | x]``: one plain descent step of
    ``step_size`` lands on the demonstration the point came from, near a demonstration the field
    points back to it (a minimum, not a fixed point that drifts), and far from the data it
    averages, as it must. One extra forward and a double backward per batch.
    """
    eps = torch.randn(target.shape, device=target.device, dtype=target.dtype, generator=generator)
    g = torch.rand((target.shape[0],) + (1,) * (target.dim() - 1), device=target.device,
                   generator=generator)  # fmt: skip
    x_g = (g * target + (1 - g) * eps).requires_grad_(True)  # (B, Tp, Da)
    with torch.enable_grad():
        e = energy(x_g).float()  # (B,)
        (grad,) = torch.autograd.grad(e.sum(), x_g, create_graph=True)
    field = grad.float() * step_size
    return torch.nn.functional.mse_loss(field, (x_g - target).detach().float())


def ranking_counterexamples(
    target: Tensor,
    refined: Tensor,
    noise_max: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Counter-examples for :func:`ranking_loss`, (K, B, Tp, Da), all detached.

    The descent's own final iterates (``refined``: (chains*B, Tp, Da), one per chain, the
    IRED-style "noised and refined" chunks), the demonstrated chunk plus Gaussian noise of a random
    scale in (0, ``noise_max``] per sample, and another sample's demonstrated chunk (the batch
    rolled by one: a plausible chunk for the wrong observation).
    """
    B = target.shape[0]
    chains = refined.detach().reshape(-1, *target.shape)  # (chains, B, Tp, Da)
    scale = noise_max * (
        1.0
        - torch.rand(
            (B,) + (1,) * (target.dim() - 1), device=target.device, generator=generator
        )  # fmt: skip
    )
    eps = torch.randn(target.shape, device=target.device, dtype=target.dtype, generator=generator)
    noised = target + scale * eps
    rolled = target.roll(1, dims=0) if B > 1 else target + eps
    return torch.cat([chains, noised[None], rolled[None]]).detach()


def ranking_loss(
    energy: Callable[[Tensor], Tensor],
    target: Tensor,
    negatives: Tensor,
    reg: float = 0.1,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """InfoNCE over the demonstrated chunk and K counter-examples for the same observation
    (IBC's objective; with one counter-example it is IRED's pairwise ``softplus(E+ - E-)``).

    ``energy`` maps ((K+1)*B, Tp, Da) to ((K+1)*B,) with the observation context repeated K+1
    times. With ``u = scale * E``: ``-log softmax(-u)[demo]`` averaged over the batch, plus
    ``reg * mean(u_demo^2)``, which anchors the energy's level (InfoNCE fixes only differences) so
    that demonstrated chunks sit near 0 for every observation; the counter-examples are free to
    sit as high as the bowl puts them. ``scale`` is the
    energy unit: with Equilibrium Matching at step size s, ``s * E`` is half a chunk's squared
    distance to the demonstration, so ``scale = s`` gives logits of order one.
    Returns (loss, E of the demos (B,)).
    """
    K, B = negatives.shape[0], target.shape[0]
    candidates = torch.cat([target[None], negatives]).flatten(0, 1)  # ((K+1)*B, Tp, Da)
    e = energy(candidates).float().view(K + 1, B)
    u = scale * e
    nce = torch.nn.functional.cross_entropy(
        -u.t(), torch.zeros(B, dtype=torch.long, device=e.device)
    )
    return nce + reg * u[0].pow(2).mean(), e[0]
