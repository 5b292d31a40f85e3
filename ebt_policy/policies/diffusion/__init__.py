"""Diffusion Policy baselines: a DiT-style transformer denoiser (``diffusion``) and the 1-D
conditional U-Net (``diffusion-unet``), with diffusers' DDPM / DDIM schedules."""

from __future__ import annotations

from ebt_policy.policies.diffusion.configuration import (
    DEFAULT_SAMPLER_STEPS,
    SAMPLERS,
    DiffusionPolicyConfig,
    DiffusionSchedule,
    DiffusionUnetPolicyConfig,
)
from ebt_policy.policies.diffusion.modeling import DiffusionPolicy, DiffusionUnetPolicy
from ebt_policy.policies.diffusion.presets import DIFFUSION_PRESETS, DIFFUSION_UNET_PRESETS

__all__ = [
    "DEFAULT_SAMPLER_STEPS",
    "DIFFUSION_PRESETS",
    "DIFFUSION_UNET_PRESETS",
    "SAMPLERS",
    "DiffusionPolicy",
    "DiffusionPolicyConfig",
    "DiffusionSchedule",
    "DiffusionUnetPolicy",
    "DiffusionUnetPolicyConfig",
]
