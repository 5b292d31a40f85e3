"""DiffusionPolicy and DiffusionUnetPolicy: Diffusion Policy on EBT's observation side.

Training (one step per batch): draw noise and a timestep per sample, noise the normalised chunk
with the DDPM schedule, and regress the noise (epsilon prediction) with the MSE. Planning: start
from Gaussian noise and denoise with DDPM (all training steps) or DDIM (few steps); both schedules
come from ``diffusers``. Only the denoiser differs between the two policies.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebt_policy.models import ShapeMeta
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.policies.chunk_policy import ChunkPolicy
from ebt_policy.policies.diffusion.configuration import (
    DEFAULT_SAMPLER_STEPS,
    DiffusionPolicyConfig,
    DiffusionSchedule,
    DiffusionUnetPolicyConfig,
)
from ebt_policy.policies.diffusion.denoisers import DiTDenoiser, MLPDenoiser
from ebt_policy.policies.diffusion.unet import ConditionalUnet1D, UnetDenoiser


def make_scheduler(schedule: DiffusionSchedule, sampler: str = "ddpm") -> Any:
    """A diffusers scheduler for ``schedule``: DDPM (training, and the ``ddpm`` sampler) or DDIM."""
    kwargs = dict(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_schedule=schedule.beta_schedule,
        prediction_type=schedule.prediction_type,
        clip_sample=schedule.clip_sample,
    )
    if sampler == "ddim":
        from diffusers.schedulers.scheduling_ddim import DDIMScheduler

        # the final step lands on the clean chunk (alpha_0 = 1), as Diffusion Policy sets it
        return DDIMScheduler(**kwargs, set_alpha_to_one=True, steps_offset=0)
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    return DDPMScheduler(**kwargs)


class DiffusionPolicy(ChunkPolicy):
    """Diffusion Policy with a DiT-style transformer (or MLP) denoiser on EBT's backbone."""

    name = "diffusion"

    def __init__(
        self,
        config: DiffusionPolicyConfig | DiffusionUnetPolicyConfig,
        shape_meta: ShapeMeta | Mapping[str, Any],
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(config, shape_meta, stats)
        self.denoiser = self.build_denoiser(self.obs_encoder.out_dim)
        self.train_scheduler = make_scheduler(config.schedule, "ddpm")
        self._sampling = None  # (sampler, steps, scheduler with its timesteps set), built lazily

    def build_denoiser(self, frame_dim: int) -> nn.Module:
        """The network ``forward(sample, t, context)``; subclasses build theirs."""
        cls = MLPDenoiser if self.config.denoiser == "mlp" else DiTDenoiser
        return cls(self.config, frame_dim, self.action_dim)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Denoising loss of one collated WindowDataset batch (MSE to the noise, or to the clean
        chunk with ``prediction_type="sample"``), in normalised units."""
        obs, target = self.training_batch(batch)
        context = self.denoiser.encode_context(self.frames(obs, augment=self.training))
        B = target.shape[0]
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        n_train = self.config.schedule.num_train_timesteps
        t = torch.randint(0, n_train, (B,), device=target.device, generator=generator)
        noisy = self.train_scheduler.add_noise(target, noise, t)  # (B, Tp, Da)
        pred = self.denoiser(noisy, t, context)
        goal = noise if self.config.schedule.prediction_type == "epsilon" else target
        return nn.functional.mse_loss(pred.float(), goal.float()), {}

    # ------------------------------------------------------------------ inference
    def set_sampler(self, sampler: str | None = None, steps: int | None = None) -> None:
        """Choose how chunks are sampled: ``"ddpm"`` or ``"ddim"``, with ``steps`` denoising steps
        (None: the current steps if the sampler is unchanged, else 100 for DDPM and 10 for DDIM).

        Updates the config too, so a policy saved afterwards samples the same way (ConfigError
        naming the field for an unknown sampler or too many steps).
        """
        schedule = self.config.schedule
        sampler = schedule.sampler if sampler is None else sampler
        if steps is None:
            same = sampler == schedule.sampler
            steps = schedule.sampler_steps if same else DEFAULT_SAMPLER_STEPS.get(sampler, 1)
        schedule = dataclasses.replace(schedule, sampler=sampler, sampler_steps=steps)  # validates
        self.config = dataclasses.replace(self.config, schedule=schedule)
        self._sampling = None

    def _sampling_scheduler(self) -> Any:
        schedule = self.config.schedule
        key = (schedule.sampler, schedule.sampler_steps)
        if self._sampling is None or self._sampling[0] != key:
            scheduler = make_scheduler(schedule, schedule.sampler)
            scheduler.set_timesteps(schedule.sampler_steps)
            self._sampling = (key, scheduler)
        return self._sampling[1]

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        B: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Denoise Gaussian noise into normalised chunks (B, Tp, Da) given the context."""
        from diffusers.utils.torch_utils import randn_tensor

        scheduler = self._sampling_scheduler()
        dev = context.device
        x = randn_tensor((B, self.horizon, self.action_dim), generator=generator, device=dev)
        for t in scheduler.timesteps:
            pred = self.denoiser(x, t.to(dev).expand(B), context)
            x = scheduler.step(pred, t, x, generator=generator).prev_sample
        # clip_sample bounds each step's clean-chunk estimate; the last step may still overshoot
        return x.clamp(-1.0, 1.0)

    def predict_chunk(
        self,
        obs_window: dict[str, np.ndarray],
        rows: Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> ChunkPrediction:
        """Plan one chunk per batch element with the configured sampler.

        Args:
            obs_window: key -> array (B, To, ...) in env units; images uint8 HWC.
            rows: which batch row (env slot) each element is; with ``generator=None`` each row
                draws its noise from the generator :meth:`start_episode` gave it.
            generator: one CPU generator for the whole batch's noise instead.
        """
        t0 = time.perf_counter()
        obs = self.obs_tensors(obs_window)
        B = next(iter(obs.values())).shape[0]
        gens = generator if generator is not None else self.row_generators(B, rows)
        with torch.no_grad():
            context = self.denoiser.encode_context(self.frames(obs))
            chunk = self.sample(context, B, gens)
        return self.chunk_prediction(chunk, self.config.schedule.sampler_steps, t0, obs_window)


class DiffusionUnetPolicy(DiffusionPolicy):
    """Diffusion Policy with its 1-D conditional U-Net (FiLM on the flattened frame features)."""

    name = "diffusion-unet"

    def build_denoiser(self, frame_dim: int) -> nn.Module:
        cfg = self.config
        unet = ConditionalUnet1D(
            self.action_dim,
            cfg.n_obs_steps * frame_dim,
            down_dims=cfg.down_dims,
            kernel_size=cfg.kernel_size,
            n_groups=cfg.n_groups,
            step_embed_dim=cfg.step_embed_dim,
        )
        return UnetDenoiser(unet)
