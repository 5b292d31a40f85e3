"""Diffusion Policy presets.

``diffusion`` (DiT-style transformer denoiser) is built from EBT's presets: same names, sizes and
training recipes, the ``mlp`` preset with an MLP denoiser where EBT has its MLP energy.
``diffusion-unet`` has a CPU-sized U-Net (``tiny``), a middle one (``small``) and Diffusion
Policy's published size (``paper``: down_dims 256, 512, 1024), with EBT's recipes of the same
names so budgets match.
"""

from __future__ import annotations

from ebt_policy.policies.chunk_policy import presets_from_ebt
from ebt_policy.policies.diffusion.configuration import (
    DiffusionPolicyConfig,
    DiffusionUnetPolicyConfig,
)
from ebt_policy.policies.ebt.presets import EBT_PRESETS
from ebt_policy.policies.factory import Preset

DIFFUSION_PRESETS: dict[str, Preset] = presets_from_ebt(DiffusionPolicyConfig, "denoiser")

DIFFUSION_UNET_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="tiny", down_dims=(16, 32, 64), step_embed_dim=32, resnet_width=8,
            n_keypoints=16,
        ),
        train=EBT_PRESETS["tiny"].train,
    ),
    "small": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="small", down_dims=(64, 128, 256), step_embed_dim=128, resnet_width=32
        ),
        train=EBT_PRESETS["small"].train,
    ),
    "paper": Preset(
        policy=DiffusionUnetPolicyConfig(
            preset="paper", down_dims=(256, 512, 1024), step_embed_dim=128, resnet_width=64
        ),
        train=EBT_PRESETS["paper"].train,
    ),
}  # fmt: skip
