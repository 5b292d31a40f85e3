"""Energy descent: the optimiser that minimises E_theta(obs, chunk) over the chunk.

One module, used by training (unrolled, second order) and by inference (first order, adaptive
stopping), so the two cannot drift apart. One step, exactly as method.md:

1. ``x = stopgrad(x_i)``, divided by its RMS per sample (``rms_norm="sample"``), by the RMS of the
   whole batch (``"batch"``: the reference code's variant, which couples batch elements; kept as an
   ablation) or not at all (``"none"``).
2. Training only: Langevin noise ``sigma_i * N(0, I)``, sigma cosine-annealed over the N steps from
   ``sigma_max`` down to ``sigma_min``.
3. Nesterov look-ahead ``x_look = x + mu * v_i``.
4. ``E = E_theta(x_look)`` per sample; step size ``alpha_i = alpha * clamp(exp(E)) / T`` per sample,
   times a random factor in ``[1/s, s]`` in training.
5. ``g = dE/dx_look`` (``create_graph`` in training only); NaN/Inf raises with the step index.
6. ``v_{i+1} = mu * v_i - alpha_i * g``; ``x_{i+1} = x + v_{i+1}``; v is detached between steps.

The energy is passed in as a callable ``energy(x) -> (B,)`` that closes over the observation
context, so the descent knows nothing about the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ebt_policy.errors import ConfigError, NumericalError
from ebt_policy.policies.ebt.objectives import OBJECTIVES, step_loss
from ebt_policy.policies.ebt.step import (
    EnergyFn,
    StepFn,
    autograd_energy_grad,
    inference_step,
    rms_normalize,
    step_alpha,
)
from ebt_policy.policies.validation import check_types, require

RMS_NORM_MODES = ("sample", "batch", "none")
STEP_SCALES = ("exp_energy", "fixed")


class NonFiniteEnergyError(NumericalError):
    """The energy or its gradient became NaN/Inf during descent (``step`` is 0-based); a
    FloatingPointError and an EbtPolicyError (the CLI prints it as one line)."""

    def __init__(self, step: int, n_steps: int, phase: str) -> None:
        super().__init__(
            f"energy descent produced NaN/Inf at step {step} of {n_steps} ({phase}); "
            "check the learning rate, the energy clamp and the input normalisation"
        )
        self.step = step


@dataclass
class DescentConfig:
    """Settings of the energy descent (method.md, "One energy-descent step")."""

    alpha: float = 1000.0  # base step size; E is a mean over Tp*Da outputs, hence large
    temperature: float = 1.0  # T in alpha * exp(E) / T
    momentum: float = 0.9  # Nesterov mu
    rms_norm: str = "sample"  # "sample" | "batch" (reference ablation) | "none"
    exp_energy_min: float = 0.01  # clamp of exp(E): bounds the per-sample step size
    exp_energy_max: float = 10.0
    train_steps_base: int = 6  # training N = base + U{0..extra}
    train_steps_extra: int = 4
    sigma_max: float = 0.2  # Langevin noise, cosine-annealed over the N training steps
    sigma_min: float = 0.002
    alpha_random_scale: float = 1.5  # training multiplies alpha by U[1/s, s] per sample
    loss_final_step_only: bool = False  # default: mean of the per-step losses
    # inference: 2 = the paper's "2 steps"; 20 with descent_min_grad 1e-3 = the adaptive mode
    descent_steps: int = 2
    descent_min_grad: float = 1e-3
    rms_eps: float = 1e-6
    # --- objective (ebt_policy.policies.ebt.objectives); "mse" + "exp_energy" is the reference
    objective: str = "mse"  # "mse" | "energy_score" (two chains per sample)
    energy_score_beta: float = 1.0  # exponent of the energy score's distances, in (0, 2)
    eqm_weight: float = 0.0  # weight of the Equilibrium-Matching term (0: off)
    step_scale: str = "exp_energy"  # "exp_energy": alpha*clamp(exp(E))/T; "fixed": alpha/T
    # inference: also stop a sample once a step moves its chunk less than this (RMS; 0: off)
    descent_min_disp: float = 0.0
    # ranking term (objectives.ranking_loss): InfoNCE of the demo against counter-examples,
    # which trains the energy's level, not only its gradient (0: off)
    rank_weight: float = 0.0
    rank_reg: float = 0.1  # weight of mean(E_demo^2) in the ranking term (anchors the level)
    rank_noise: float = 0.5  # largest noise scale of the noised-demo counter-example
    rank_scale: float = 0.0  # the ranking's energy unit: logits -rank_scale*E (0: alpha / T)

    def __post_init__(self) -> None:
        check_types(self, "descent config")

        def need(ok: bool, what: str) -> None:
            require(ok, "descent config", what)

        need(
            self.rms_norm in RMS_NORM_MODES,
            f"rms_norm must be one of {RMS_NORM_MODES}, got {self.rms_norm!r}",
        )
        need(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        need(
            0 < self.exp_energy_min <= self.exp_energy_max,
            "need 0 < exp_energy_min <= exp_energy_max, "
            f"got {self.exp_energy_min}, {self.exp_energy_max}",
        )
        need(
            self.train_steps_base >= 1,
            f"train_steps_base must be >= 1, got {self.train_steps_base}",
        )
        need(
            self.train_steps_extra >= 0,
            f"train_steps_extra must be >= 0, got {self.train_steps_extra}",
        )
        need(
            0 <= self.sigma_min <= self.sigma_max,
            f"need 0 <= sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}",
        )
        need(
            self.alpha_random_scale >= 1.0,
            f"alpha_random_scale must be >= 1, got {self.alpha_random_scale}",
        )
        need(self.descent_steps >= 1, f"descent_steps must be >= 1, got {self.descent_steps}")
        need(
            self.descent_min_grad >= 0,
            f"descent_min_grad must be >= 0, got {self.descent_min_grad}",
        )
        need(self.rms_eps > 0, f"rms_eps must be > 0, got {self.rms_eps}")
        need(
            self.objective in OBJECTIVES,
            f"objective must be one of {OBJECTIVES}, got {self.objective!r}",
        )
        need(
            0 < self.energy_score_beta < 2,
            f"energy_score_beta must be in (0, 2), got {self.energy_score_beta}",
        )
        need(self.eqm_weight >= 0, f"eqm_weight must be >= 0, got {self.eqm_weight}")
        need(
            self.step_scale in STEP_SCALES,
            f"step_scale must be one of {STEP_SCALES}, got {self.step_scale!r}",
        )
        need(self.rank_weight >= 0, f"rank_weight must be >= 0, got {self.rank_weight}")
        need(self.rank_reg >= 0, f"rank_reg must be >= 0, got {self.rank_reg}")
        need(self.rank_scale >= 0, f"rank_scale must be >= 0, got {self.rank_scale}")
        need(self.rank_noise > 0, f"rank_noise must be > 0, got {self.rank_noise}")
        need(
            self.descent_min_disp >= 0,
            f"descent_min_disp must be >= 0, got {self.descent_min_disp}",
        )

    @property
    def n_chains(self) -> int:
        """Descent chains per training sample: the energy score compares two."""
        return 2 if self.objective == "energy_score" else 1

    @property
    def step_size(self) -> float:
        """The plain step size alpha / T (what the fixed step scale uses)."""
        return self.alpha / self.temperature


@dataclass
class DescentResult:
    """Inference output, all tensors per sample."""

    chunk: Tensor  # (B, Tp, Da) normalised
    energy: Tensor  # (B,) energy at the last step's look-ahead point
    steps: Tensor  # (B,) int64 descent steps used
    grad_norm: Tensor  # (B,) norm of the last gradient
    # (B,) with best-of-K (K > 1): RMS distance of a row's K final candidates from their mean,
    # normalised units (how much the plans from different initial noise disagree); else None
    spread: Tensor | None = None


def cosine_sigmas(n: int, sigma_max: float, sigma_min: float) -> list[float]:
    """Noise levels for n steps, cosine-annealed from sigma_max (first) to sigma_min (last)."""
    if n == 1:
        return [sigma_max]
    return [
        sigma_min + 0.5 * (sigma_max - sigma_min) * (1.0 + math.cos(math.pi * i / (n - 1)))
        for i in range(n)
    ]


class EnergyDescent(torch.nn.Module):
    """Energy descent shared by training (:meth:`train_unroll`) and inference (:meth:`infer`).

    It has no parameters; it is a module so that it moves and prints with the policy.
    """

    def __init__(self, config: DescentConfig | None = None) -> None:
        super().__init__()
        self.config = config or DescentConfig()

    def extra_repr(self) -> str:
        return repr(self.config)

    def normalize(self, x: Tensor) -> Tensor:
        """Divide x (B, ...) by its RMS, per sample or over the whole batch."""
        return rms_normalize(x, self.config.rms_norm, self.config.rms_eps)

    def step(
        self,
        energy: EnergyFn,
        x: Tensor,
        v: Tensor,
        *,
        training: bool,
        sigma: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One descent step. Returns (x_next, v_next, energy (B,), grad (B, ...)).

        In training ``x_next`` carries the graph of the step (through g and alpha_i) back to the
        energy's parameters; ``v_next`` is detached either way.
        """
        cfg = self.config
        x = self.normalize(x.detach())
        if training and sigma > 0:
            x = x + sigma * torch.randn(
                x.shape, device=x.device, dtype=x.dtype, generator=generator
            )
        x_look = (x + cfg.momentum * v).requires_grad_(True)
        with torch.enable_grad():
            e = energy(x_look).float()  # (B,)
            (g,) = torch.autograd.grad(e.sum(), x_look, create_graph=training)
        g = g.to(x.dtype)
        alpha = step_alpha(cfg, e)  # (B,)
        if not training:
            e, alpha = e.detach(), alpha.detach()
        if training and cfg.alpha_random_scale > 1.0:
            lo = 1.0 / cfg.alpha_random_scale
            u = torch.rand(alpha.shape, device=alpha.device, generator=generator)
            alpha = alpha * (lo + (cfg.alpha_random_scale - lo) * u)
        alpha = alpha.view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1)
        v_next = cfg.momentum * v - alpha * g
        x_next = x + v_next
        return x_next, v_next.detach(), e, g

    def train_unroll(
        self,
        energy: EnergyFn,
        target: Tensor,
        generator: torch.Generator | None = None,
        n_steps: int | None = None,
        final: list[Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Unroll N steps from noise towards ``target`` (B, Tp, Da, normalised); return the loss.

        N = base + U{0..extra} unless ``n_steps`` is given. Loss: mean over steps of the step
        loss (the config's objective: MSE, or the energy score over ``n_chains`` chains stacked
        on the batch dim; or the final step's only). One host sync per call (NaN check). A list
        passed as ``final`` receives the last iterate, detached ((chains*B, Tp, Da)).
        """
        cfg = self.config
        dev = target.device
        if n_steps is None:
            extra = 0
            if cfg.train_steps_extra > 0:
                extra = int(
                    torch.randint(
                        0, cfg.train_steps_extra + 1, (1,), generator=_cpu_or_none(generator)
                    )
                )
            n_steps = cfg.train_steps_base + extra
        shape = (cfg.n_chains * target.shape[0], *target.shape[1:])  # (chains*B, Tp, Da)
        x = torch.randn(shape, device=dev, dtype=target.dtype, generator=generator)
        v = torch.zeros_like(x)
        sigmas = cosine_sigmas(n_steps, cfg.sigma_max, cfg.sigma_min)
        losses = []
        finite = []
        energies = []
        grads = []
        for i in range(n_steps):
            x, v, e, g = self.step(
                energy, x, v, training=True, sigma=sigmas[i], generator=generator
            )
            finite.append(torch.isfinite(e).all() & torch.isfinite(g).all())
            if not cfg.loss_final_step_only or i == n_steps - 1:
                losses.append(step_loss(cfg.objective, x, target, cfg.energy_score_beta))
            energies.append(e.detach())
            grads.append(g.detach())
        loss = torch.stack(losses).mean()
        if final is not None:
            final.append(x.detach())
        # Everything the host needs (NaN flags and metrics) in one transfer: one sync per batch.
        summary = torch.stack(
            [
                loss.detach(),
                losses[-1].detach(),
                energies[0].mean(),
                energies[-1].mean(),
                grads[-1].flatten(1).norm(dim=1).mean().float(),
            ]
        )
        values = torch.cat([torch.stack(finite).float(), summary]).tolist()
        flags, (loss_v, final_v, e_first, e_final, g_final) = values[:n_steps], values[n_steps:]
        if not all(f == 1.0 for f in flags):
            raise NonFiniteEnergyError(flags.index(0.0), n_steps, "training")
        metrics = {
            "loss": loss_v,
            # the final step's loss, named after the objective (an energy score is not an MSE)
            ("final_mse" if cfg.objective == "mse" else f"final_{cfg.objective}"): final_v,
            "n_steps": float(n_steps),
            "energy_first": e_first,
            "energy_final": e_final,
            "grad_norm_final": g_final,
        }
        return loss, metrics

    @torch.no_grad()
    def infer(
        self,
        energy: EnergyFn | None,
        x0: Tensor,
        descent_steps: int | None = None,
        descent_min_grad: float | None = None,
        *,
        min_energy_change: float = 0.0,
        reject_uphill: bool = False,
        step_fn: StepFn | None = None,
    ) -> DescentResult:
        """Descend from ``x0`` (B, Tp, Da) without noise or random step scale.

        Per sample: keep stepping while steps < descent_steps - 1, the last gradient norm
        exceeds ``descent_min_grad``, (when the config's ``descent_min_disp`` > 0) the last step
        moved the chunk more than that (RMS) and (when ``min_energy_change`` > 0) the last step
        changed the energy by more than that fraction, then take one final step (the limits default
        to the config's). A sample that has stopped is frozen while the others continue, so each
        sample's result does not depend on its batch neighbours.

        ``reject_uphill``: a sample whose energy rises from one evaluated point to the next
        (a step that went uphill) does not take that step and stops; its result is the point
        of lowest energy it evaluated, with that point's energy (so the energy it reports is the
        energy of the chunk it returns). The final step is checked the same way.

        ``step_fn(x, v)`` replaces the eager step (:func:`inference_step` over ``energy``), e.g.
        with a compiled one; it must compute the same step.
        """
        cfg = self.config
        if descent_steps is None:
            descent_steps = cfg.descent_steps
        if descent_min_grad is None:
            descent_min_grad = cfg.descent_min_grad
        if descent_steps < 1:
            raise ConfigError(f"descent_steps must be >= 1, got {descent_steps}")
        if step_fn is None:
            if energy is None:
                raise ValueError("infer needs an energy or a step_fn")
            grad_fn = autograd_energy_grad(energy)
            step_fn = lambda x, v: inference_step(grad_fn, x, v, cfg)  # noqa: E731
        if not min_energy_change >= 0:  # NaN fails too
            raise ConfigError(f"min_energy_change must be >= 0, got {min_energy_change}")
        min_disp, min_change = cfg.descent_min_disp, min_energy_change
        B = x0.shape[0]
        dev = x0.device
        x = x0
        v = torch.zeros_like(x)
        steps = torch.zeros(B, dtype=torch.long, device=dev)
        inf = torch.full((B,), float("inf"), device=dev)
        gnorm, disp, change, e_last = inf, inf, inf, inf
        active = torch.ones(B, dtype=torch.bool, device=dev)
        shape = (B,) + (1,) * (x.dim() - 1)
        best = _Best(x, inf) if reject_uphill else None
        for i in range(descent_steps - 1):
            if i > 0:  # before the first step every gradient norm is "infinite": no sync needed
                active = active & (gnorm > descent_min_grad)
                if min_disp > 0:
                    active = active & (disp > min_disp)
                if min_change > 0:
                    active = active & (change > min_change)
                if best is not None:
                    active = active & ~best.rose
                if not bool(active.any()):
                    break
            x_new, v_new, e, g = step_fn(x, v)
            _check_finite(e, g, i, descent_steps)
            if best is not None:  # a step that went uphill is not taken
                active = best.update(active, self._look_ahead(x, v), e, g)
            if min_disp > 0:  # RMS displacement of this step, per sample
                moved = (x_new - x).flatten(1).pow(2).mean(dim=1).sqrt().float()
                disp = torch.where(active, moved, disp)
            if min_change > 0:  # relative change of the energy since the previous step
                rel = (e - e_last).abs() / e_last.abs().clamp_min(1e-12)
                change = torch.where(active, rel.nan_to_num(float("inf")), change)
                e_last = torch.where(active, e, e_last)
            m = active.view(shape)
            x = torch.where(m, x_new, x)
            v = torch.where(m, v_new, v)
            gnorm = torch.where(active, g.flatten(1).norm(dim=1).float(), gnorm)
            steps = steps + active.long()
        x_last, v_last = x, v
        x, v, e, g = step_fn(x, v)
        _check_finite(e, g, int(steps.max()), descent_steps)
        gnorm = g.flatten(1).norm(dim=1).float()
        if best is not None:
            best.update(~best.rose, self._look_ahead(x_last, v_last), e, g)
            m = best.rose.view(shape)
            x = torch.where(m, best.x, x)
            e = torch.where(best.rose, best.e, e)
            gnorm = torch.where(best.rose, best.gnorm, gnorm)
        return DescentResult(chunk=x, energy=e, steps=steps + 1, grad_norm=gnorm)

    def _look_ahead(self, x: Tensor, v: Tensor) -> Tensor:
        """The point a step from (x, v) evaluates the energy at (as :func:`inference_step`)."""
        cfg = self.config
        return rms_normalize(x, cfg.rms_norm, cfg.rms_eps) + cfg.momentum * v


class _Best:
    """Per sample: the evaluated point of lowest energy so far, and whether its energy rose."""

    def __init__(self, x: Tensor, inf: Tensor) -> None:
        self.x = x.clone()
        self.e = inf.clone()
        self.gnorm = inf.clone()
        self.rose = torch.zeros(inf.shape, dtype=torch.bool, device=inf.device)

    def update(self, active: Tensor, point: Tensor, e: Tensor, g: Tensor) -> Tensor:
        """Record ``active`` samples' energies ``e`` at ``point``; returns the samples whose
        energy did not rise (they take their step)."""
        rose = active & (e > self.e)
        lower = active & ~rose
        self.x = torch.where(lower.view(-1, *([1] * (point.dim() - 1))), point, self.x)
        self.e = torch.where(lower, e, self.e)
        self.gnorm = torch.where(lower, g.flatten(1).norm(dim=1).float(), self.gnorm)
        self.rose = self.rose | rose
        return lower


def _check_finite(e: Tensor, g: Tensor, step: int, n_steps: int) -> None:
    if not bool(torch.isfinite(e).all() & torch.isfinite(g).all()):  # one host sync
        raise NonFiniteEnergyError(step, n_steps, "inference")


def _cpu_or_none(generator: torch.Generator | None) -> torch.Generator | None:
    """The step count is drawn on the CPU; use the generator only if it is a CPU one."""
    if generator is not None and generator.device.type == "cpu":
        return generator
    return None
