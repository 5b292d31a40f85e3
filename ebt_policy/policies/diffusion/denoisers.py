"""The denoisers of the ``diffusion`` policy: a DiT-style transformer and an MLP.

Every denoiser has EBT's energy interface shape: ``encode_context(frames)`` once per chunk, then
``forward(sample, t, context)`` once per denoising step, returning a (B, Tp, Da) prediction (the
noise, or the clean chunk).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt_policy.models.transformer import Attention, FeedForward, sinusoidal_positions
from ebt_policy.policies.chunk_policy import ObsTokenEncoder, action_obs_mask, timestep_embedding
from ebt_policy.policies.diffusion.configuration import DiffusionPolicyConfig


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive normalisation: x (B, L, d) shifted and scaled per sample by (B, 1, d)."""
    return x * (1 + scale) + shift


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer starting at zero (adaLN-Zero: every block starts as the identity)."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DiTBlock(nn.Module):
    """Pre-norm block: self-attention over the action tokens and feed-forward, both modulated by
    the timestep (shift, scale, gate), with cross-attention to the observation tokens between."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, elementwise_affine=False)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.cross_attn = Attention(d_model, n_heads)
        self.norm3 = nn.RMSNorm(d_model, elementwise_affine=False)
        self.ffn = FeedForward(d_model, ffn_mult)
        self.modulation = nn.Sequential(nn.SiLU(), zero_linear(d_model, 6 * d_model))

    def forward(self, x: Tensor, memory: Tensor, cond: Tensor, cross_mask: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, -1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.self_attn(h, h, None, fused=True)
        x = x + self.cross_attn(self.norm2(x), memory, cross_mask, fused=True)
        return x + gate2 * self.ffn(modulate(self.norm3(x), shift2, scale2))


class DiTDenoiser(nn.Module):
    """DiT-style denoiser: one token per action (EBT's action embedding and positions), the
    observation tokens of EBT's temporal encoder as cross-attention memory."""

    def __init__(self, cfg: DiffusionPolicyConfig, frame_dim: int, action_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        self.obs = ObsTokenEncoder(
            frame_dim, cfg.n_obs_steps, d, cfg.n_heads, cfg.n_obs_layers, cfg.ffn_mult
        )
        self.action_in = nn.Sequential(nn.Linear(action_dim, d), nn.GELU(), nn.Linear(d, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.n_heads, cfg.ffn_mult) for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.RMSNorm(d, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), zero_linear(d, 2 * d))
        self.out = zero_linear(d, action_dim)
        self.register_buffer(
            "action_pos", sinusoidal_positions(cfg.horizon, d)[None], persistent=False
        )
        self.register_buffer(
            "cross_mask", action_obs_mask(cfg.horizon, cfg.n_obs_steps), persistent=False
        )

    def encode_context(self, frames: Tensor) -> Tensor:
        """Per-frame features (B, To, F) -> observation tokens (B, To, d)."""
        return self.obs(frames)

    def forward(self, sample: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """Noisy chunk (B, Tp, Da), timesteps (B,), observation tokens -> prediction (B, Tp, Da)."""
        cond = self.time_mlp(timestep_embedding(t, self.d_model))  # (B, d)
        x = self.action_in(sample) + self.action_pos  # (B, Tp, d)
        for block in self.blocks:
            x = block(x, context, cond, self.cross_mask)
        shift, scale = self.final_modulation(cond)[:, None].chunk(2, -1)
        return self.out(modulate(self.final_norm(x), shift, scale))


class MLPDenoiser(nn.Module):
    """MLP over [flattened observation window, flattened noisy chunk, timestep embedding]."""

    def __init__(self, cfg: DiffusionPolicyConfig, frame_dim: int, action_dim: int) -> None:
        super().__init__()
        from ebt_policy.policies.mse.modeling import mlp

        self.chunk_shape = (cfg.horizon, action_dim)
        self.t_dim = 64
        d_in = cfg.n_obs_steps * frame_dim + cfg.horizon * action_dim + self.t_dim
        self.net = mlp(d_in, cfg.mlp_hidden, cfg.mlp_layers, cfg.horizon * action_dim)

    def encode_context(self, frames: Tensor) -> Tensor:
        return frames.flatten(1)  # (B, To, F) -> (B, To*F)

    def forward(self, sample: Tensor, t: Tensor, context: Tensor) -> Tensor:
        x = torch.cat([context, sample.flatten(1), timestep_embedding(t, self.t_dim)], dim=-1)
        return self.net(x).view(-1, *self.chunk_shape)  # (B, Tp*Da) -> (B, Tp, Da)
