"""EBT-Policy: an energy network over (observation window, action chunk) plus the energy descent.

``EBTPolicy`` holds the normaliser (statistics travel in ``state_dict``), the per-frame observation
encoder, the energy network (transformer or MLP) and the :class:`EnergyDescent` that both
:meth:`EBTPolicy.compute_loss` (unrolled, second order) and :meth:`EBTPolicy.predict_chunk`
(first order, adaptive stopping) run. Its recipe is :class:`EBTPolicyConfig`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebt_policy.models.mlp_energy import MLPEnergy
from ebt_policy.models.shapes import ShapeMeta
from ebt_policy.models.transformer import TransformerEnergy
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.policies.calibration import chunk_uncertainty
from ebt_policy.policies.chunk_policy import ChunkPolicy
from ebt_policy.policies.ebt.configuration import EBTPolicyConfig
from ebt_policy.policies.ebt.descent import EnergyDescent
from ebt_policy.policies.ebt.objectives import eqm_loss, ranking_counterexamples, ranking_loss

ACTION_KEY = "action"


class EBTPolicy(ChunkPolicy):
    """EBT-Policy.

    Args:
        config: the recipe.
        shape_meta: a :class:`ShapeMeta`, or the dict
            ``{"obs": {key: {"shape", "type"}}, "action": {"shape": [Da]}}``.
        stats: per-key statistics from ``compute_stats`` (robot units). ``None`` builds an empty
            normaliser for ``load_state_dict`` to fill (used before that, it raises ConfigError).

    ``shape_meta`` is kept in its dict form (what checkpoints store), ``shapes`` as a ShapeMeta.
    """

    name = "ebt"

    def __init__(
        self,
        config: EBTPolicyConfig,
        shape_meta: ShapeMeta | Mapping[str, Any],
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        # the observation side (shapes, normaliser, frame encoder) exactly as the baselines'
        super().__init__(config, shape_meta, stats)
        action_dim = self.action_dim
        # what every energy network is sized by: frame features F, Da, To, Tp
        dims = (self.obs_encoder.out_dim, action_dim, config.n_obs_steps, config.horizon)
        if config.energy == "mlp":
            self.energy: nn.Module = MLPEnergy(
                *dims, hidden=config.mlp_hidden, n_layers=config.mlp_layers
            )
        else:
            self.energy = TransformerEnergy(
                *dims,
                d_model=config.d_model,
                n_heads=config.n_heads,
                n_obs_layers=config.n_obs_layers,
                n_energy_layers=config.n_energy_layers,
                ffn_mult=config.ffn_mult,
            )
        self.descent = EnergyDescent(config.descent)

    # ------------------------------------------------------------------ helpers
    def encode(self, obs: dict[str, Tensor], augment: bool = False) -> Tensor:
        """Normalised observations -> the energy's context (computed once per batch)."""
        frames = self.obs_encoder(obs, augment=augment)  # (B, To, F)
        return self.energy.encode_context(frames)

    def energy_fn(self, context: Tensor, fused: bool = False):
        """The energy as a function of the (normalised) chunk alone, for the descent."""
        return lambda chunk: self.energy(context, chunk, fused=fused)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Behaviour-cloning loss of one collated WindowDataset batch (robot units).

        Unrolls N descent steps from noise with second-order gradients (method.md, "Training").
        Observation augmentation follows ``self.training``.
        """
        obs, target = self.training_batch(batch)  # target (B, Tp, Da) in [-1, 1]
        context = self.encode(self._normalize_obs(obs), augment=self.training)
        cfg = self.descent.config
        # the energy score's chains share the observation context: (chains*B, ...)
        chains_ctx = context if cfg.n_chains == 1 else torch.cat([context] * cfg.n_chains)
        final: list[Tensor] = []
        loss, metrics = self.descent.train_unroll(
            self.energy_fn(chains_ctx), target, generator=generator, final=final
        )
        if cfg.eqm_weight > 0:
            eqm = eqm_loss(self.energy_fn(context), target, cfg.step_size, generator=generator)
            loss = loss + cfg.eqm_weight * eqm
            metrics["eqm_loss"] = float(eqm.detach())
        if cfg.rank_weight > 0:
            negatives = ranking_counterexamples(target, final[0], cfg.rank_noise, generator)
            n_cand = negatives.shape[0] + 1
            rank, e_demo = ranking_loss(
                self.energy_fn(torch.cat([context] * n_cand)),
                target,
                negatives,
                cfg.rank_reg,
                cfg.rank_scale or cfg.step_size,
            )
            loss = loss + cfg.rank_weight * rank
            metrics["rank_loss"] = float(rank.detach())
            metrics["energy_demo"] = float(e_demo.detach().mean())
        elif cfg.step_scale == "fixed":
            # With a fixed step only grad_x E is trained: the energy's level (e.g. the output
            # bias) gets no gradient. Keep every parameter in the graph (DDP requires it) at zero
            # weight, and report the energy of the demonstrated chunks.
            e_demo = self.energy(context, target).float()  # (B,)
            loss = loss + 0.0 * e_demo.mean()
            metrics["energy_demo"] = float(e_demo.detach().mean())
        return loss, metrics

    # ------------------------------------------------------------------ inference
    @property
    def engine(self) -> Any:
        """The :class:`~ebt_policy.inference.InferenceEngine` that :meth:`predict_chunk` plans
        with (built on first use with the exact-mode defaults; see :meth:`set_engine`)."""
        engine = self.__dict__.get("_engine")
        if engine is None:
            from ebt_policy.inference import InferenceEngine

            engine = self.__dict__["_engine"] = InferenceEngine(self)
        return engine

    def set_engine(self, options: Any = None, **fields: Any) -> Any:
        """Plan with engine ``options`` (an :class:`~ebt_policy.inference.EngineOptions`, or its
        fields as keywords; ConfigError naming a bad one); returns the new engine. Runtime only:
        not saved with the policy. Per-row warm starts begin afresh."""
        from ebt_policy.inference import EngineOptions, InferenceEngine

        if options is None:
            options = EngineOptions(**fields)
        elif fields:
            options = dataclasses.replace(options, **fields)
        self.__dict__["_engine"] = InferenceEngine(self, options)
        return self.__dict__["_engine"]

    def reset(self) -> None:
        """Forget per-row state: episode generators and warm starts."""
        super().reset()
        self.engine.reset()

    def start_episode(self, row: int, seed: int | None) -> None:
        """Seed ``row``'s noise (see ChunkPolicy) and drop its warm start."""
        super().start_episode(row, seed)
        self.engine.forget(row)

    def set_inference(
        self, descent_steps: int | None = None, descent_min_grad: float | None = None
    ) -> None:
        """Change the inference stopping rule (``descent_steps=20, descent_min_grad=1e-3``: the
        adaptive mode); None keeps the current value.

        Updates the config too, so a policy saved afterwards plans the same way.
        """
        descent = self.config.descent
        descent = dataclasses.replace(
            descent,
            descent_steps=descent.descent_steps if descent_steps is None else descent_steps,
            descent_min_grad=(
                descent.descent_min_grad if descent_min_grad is None else descent_min_grad
            ),
        )  # validates (ConfigError naming the field)
        self.config = dataclasses.replace(self.config, descent=descent)
        self.descent.config = descent

    def _stopping_rule(
        self, descent_steps: Any, descent_min_grad: Any
    ) -> tuple[int | None, float | None]:
        """Per-call stopping-rule overrides, checked as the config checks its own (ConfigError
        naming the field: steps a positive int, min_grad a number >= 0, NaN refused)."""
        given = {"descent_steps": descent_steps, "descent_min_grad": descent_min_grad}
        given = {name: value for name, value in given.items() if value is not None}
        checked = dataclasses.replace(self.config.descent, **given) if given else None
        steps = checked.descent_steps if "descent_steps" in given else None
        min_grad = checked.descent_min_grad if "descent_min_grad" in given else None
        return steps, min_grad

    def predict_chunk(
        self,
        obs_window: dict[str, np.ndarray],
        rows: Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
        descent_steps: int | None = None,
        descent_min_grad: float | None = None,
        init_chunk: Tensor | np.ndarray | None = None,
    ) -> ChunkPrediction:
        """Plan one chunk per batch element from an observation window in env units.

        Args:
            obs_window: key -> array (B, To, ...); images uint8 HWC.
            rows: which batch row (env slot) each element is; with ``generator=None`` each row
                draws its noise from the generator :meth:`start_episode` gave it.
            generator: seeds the initial noise x_0 ~ N(0, I) (device of the policy).
            descent_steps, descent_min_grad: override the config's inference stopping rule.
            init_chunk: start from this normalised chunk (B, Tp, Da) instead of noise.

        The :attr:`engine` plans (its options: warm start, best-of-K, compile, bf16, CUDA
        graphs); ``uncertainty`` is None unless the options keep the calibrated distribution.
        """
        t0 = time.perf_counter()
        descent_steps, descent_min_grad = self._stopping_rule(descent_steps, descent_min_grad)
        obs = self.obs_tensors(obs_window)
        engine = self.engine
        result = engine.plan(
            obs,
            rows=rows,
            generator=generator,
            init_chunk=init_chunk,
            descent_steps=descent_steps,
            descent_min_grad=descent_min_grad,
        )
        energy, grad_norm = result.energy.float().cpu().numpy(), result.grad_norm.cpu().numpy()
        spread = None if result.spread is None else result.spread.float().cpu().numpy()
        uncertainty = None
        if engine.options.calibrated:  # warm starts shift what was calibrated
            uncertainty = chunk_uncertainty(
                self, energy, grad_norm, descent_steps, descent_min_grad, spread
            )
        return self.chunk_prediction(
            result.chunk,
            result.steps.cpu().numpy(),
            t0,
            obs_window,
            energy=energy,
            grad_norm=grad_norm,
            uncertainty=uncertainty,
            spread=spread,
        )
