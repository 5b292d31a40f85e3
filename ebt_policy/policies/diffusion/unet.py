"""Diffusion Policy's 1-D conditional U-Net over the time axis of the chunk, with FiLM.

Each residual block runs two (Conv1d, GroupNorm, Mish) layers over the chunk's time axis; between
them the conditioning vector (timestep embedding and flattened observation features) scales and
shifts every channel (FiLM). Levels halve the time axis on the way down and double it on the way
up, with skip connections between levels of the same length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebt_policy.policies.chunk_policy import timestep_embedding


class ConvBlock(nn.Sequential):
    """Conv1d (same length), GroupNorm, Mish: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Residual block whose channels are scaled and shifted by the conditioning vector."""

    def __init__(
        self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int
    ) -> None:
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = ConvBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(x)  # (B, C_out, T)
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)  # (B, C_out, 1) each
        h = self.conv2(scale * h + shift)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noisy chunk (B, Tp, Da), timesteps (B,), global condition (B, G) -> (B, Tp, Da)."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
    ) -> None:
        super().__init__()
        self.step_embed_dim = step_embed_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim

        def res(c_in: int, c_out: int) -> FiLMResBlock:
            return FiLMResBlock(c_in, c_out, cond_dim, kernel_size, n_groups)

        dims = [action_dim, *down_dims]
        n_levels = len(down_dims)
        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = level == n_levels - 1
            resample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)
            self.down.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), resample]))
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        # from the deepest level back to the first: each takes its skip (same length) beside x
        for c_low, c_high in reversed(list(zip(down_dims[:-1], down_dims[1:], strict=True))):
            self.up.append(
                nn.ModuleList(
                    [
                        res(2 * c_high, c_low),
                        res(c_low, c_low),
                        nn.ConvTranspose1d(c_low, c_low, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: Tensor, t: Tensor, global_cond: Tensor) -> Tensor:
        cond = torch.cat(
            [self.time_mlp(timestep_embedding(t, self.step_embed_dim)), global_cond], dim=-1
        )  # (B, cond_dim)
        x = sample.transpose(1, 2)  # (B, Tp, Da) -> (B, Da, Tp)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        # the deepest levels' skips, deepest first (the first level's is not used, as in DP)
        for (res1, res2, upsample), skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = upsample(res2(res1(torch.cat([x, skip], dim=1), cond), cond))
        return self.final(x).transpose(1, 2)  # (B, Da, Tp) -> (B, Tp, Da)


class UnetDenoiser(nn.Module):
    """The U-Net behind the denoiser interface: context = flattened frame features (B, To*F)."""

    def __init__(self, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.unet = unet

    def encode_context(self, frames: Tensor) -> Tensor:
        return frames.flatten(1)  # (B, To, F) -> (B, To*F)

    def forward(self, sample: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self.unet(sample, t, context)
