"""Diffusion Policy presets.

``diffusion`` (DiT-style transformer denoiser) takes EBT's preset sizes and training recipes under
the same names, the ``mlp`` preset using an MLP denoiser like EBT's MLP energy. ``diffusion-unet``
has a CPU-sized U-Net (``tiny``), a middle one (``small``) and Diffusion Policy's published size
(``paper``: down_dims 256, 512, 1024), with EBT's recipes of the same names so budgets match.
"""

from __future__ import annotations

from ebt_policy.policies.diffusion.configuration import (
    DiffusionPolicyConfig,
    DiffusionUnetPolicyConfig,
)
from ebt_policy.policies.factory import Preset, TrainRecipe

TINY = TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=32)
SMALL = TrainRecipe(lr=3e-4, warmup_steps=200, batch_size=64)
PAPER = TrainRecipe(lr=1e-4, warmup_steps=500, batch_size=64)

DIFFUSION_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        policy=DiffusionPolicyConfig(
            preset="tiny", denoiser="transformer", d_model=64, n_heads=4, n_obs_layers=1,
            n_layers=1, resnet_width=8, n_keypoints=16,
        ),
        train=TINY,
    ),
    "small": Preset(
        policy=DiffusionPolicyConfig(
            preset="small", denoiser="transformer", d_model=128, n_heads=4, n_obs_layers=2,
            n_layers=2, resnet_width=32,
        ),
        train=SMALL,
    ),
    "paper": Preset(
        policy=DiffusionPolicyConfig(
            preset="paper", denoiser="transformer", d_model=256, n_heads=4, n_obs_layers=8,
            n_layers=8, resnet_width=64,
        ),
        train=PAPER,
    ),
    "mlp": Preset(
        policy=DiffusionPolicyConfig(
            preset="mlp", denoiser="mlp", mlp_hidden=256, mlp_layers=3, resnet_width=32
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=256),
    ),
}  # fmt: skip

DIFFUSION_UNET_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="tiny", down_dims=(16, 32, 64), step_embed_dim=32, resnet_width=8,
            n_keypoints=16,
        ),
        train=TINY,
    ),
    "small": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="small", down_dims=(64, 128, 256), step_embed_dim=128, resnet_width=32
        ),
        train=SMALL,
    ),
    "paper": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="paper", down_dims=(256, 512, 1024), step_embed_dim=128, resnet_width=64
        ),
        train=PAPER,
    ),
}  # fmt: skip
