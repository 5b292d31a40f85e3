"""The energy transformer of EBT-Policy: E_theta(observation tokens, action chunk) -> (B,).

Layout (method.md, "Network"):

* observation temporal encoder: per-frame features -> linear to d, learned position over To,
  pre-norm blocks with causal self-attention over time, final RMSNorm -> To tokens;
* action tokens: one per action in the chunk, MLP(Da -> d) plus fixed sinusoidal positions;
* energy blocks: bidirectional self-attention over the Tp action tokens, cross-attention to the
  observation tokens where action r may see frame c only if r >= c, feed-forward; pre-norm RMSNorm;
* head: RMSNorm -> MLP(d -> d -> Da) per token; energy = mean over all Tp x Da outputs.

Attention is written as explicit matmul-softmax because training differentiates the energy
gradient again (second order) and fused kernels may lack double backward. Inference, which needs
only first-order gradients, may use ``torch.nn.functional.scaled_dot_product_attention`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(n: int, d: int) -> Tensor:
    """Fixed sinusoidal position table (n, d) as in "Attention is all you need"."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1)
    half = d // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = pos * freq[None, :]  # (n, half)
    table = torch.zeros(n, d)
    table[:, 0 : 2 * half : 2] = torch.sin(angles)
    table[:, 1 : 2 * half : 2] = torch.cos(angles)
    return table


class Attention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys.

    ``mask`` is a boolean (Lq, Lk) tensor, True where attention is allowed.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)
        # q/k RMS normalisation keeps the attention logits bounded whatever the residual scale.
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def forward(
        self, x: Tensor, memory: Tensor, mask: Tensor | None = None, fused: bool = False
    ) -> Tensor:
        B, Lq, D = x.shape
        Lk = memory.shape[1]
        H, hd = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, Lq, H, hd).transpose(1, 2)  # (B, H, Lq, hd)
        k, v = self.kv_proj(memory).view(B, Lk, 2, H, hd).permute(2, 0, 3, 1, 4)  # (B, H, Lk, hd)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, H, Lq, Lk)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            out = att.softmax(dim=-1) @ v  # (B, H, Lq, hd)
        out = out.transpose(1, 2).reshape(B, Lq, D)  # (B, Lq, D)
        return self.out_proj(out)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, mult: int) -> None:
        super().__init__(
            nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Linear(mult * d_model, d_model)
        )


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: masked self-attention, then feed-forward."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_mult)

    def forward(self, x: Tensor, mask: Tensor | None = None, fused: bool = False) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask, fused)
        return x + self.ffn(self.norm2(x))


class EnergyBlock(nn.Module):
    """Pre-norm block: self-attention over actions, cross-attention to frames, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.cross_attn = Attention(d_model, n_heads)
        self.norm3 = nn.RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_mult)

    def forward(self, x: Tensor, memory: Tensor, cross_mask: Tensor, fused: bool = False) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, None, fused)
        x = x + self.cross_attn(self.norm2(x), memory, cross_mask, fused)
        return x + self.ffn(self.norm3(x))


class TransformerEnergy(nn.Module):
    """Energy transformer. ``encode_context`` once per batch, then ``forward`` per descent step."""

    def __init__(
        self,
        frame_dim: int,
        action_dim: int,
        n_obs_steps: int,
        horizon: int,
        d_model: int = 256,
        n_heads: int = 4,
        n_obs_layers: int = 8,
        n_energy_layers: int = 8,
        ffn_mult: int = 4,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.horizon = horizon
        self.obs_in = nn.Linear(frame_dim, d_model)
        self.obs_pos = nn.Parameter(torch.randn(1, n_obs_steps, d_model) * 0.02)
        self.obs_blocks = nn.ModuleList(
            SelfAttentionBlock(d_model, n_heads, ffn_mult) for _ in range(n_obs_layers)
        )
        self.obs_norm = nn.RMSNorm(d_model)
        self.action_in = nn.Sequential(
            nn.Linear(action_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.energy_blocks = nn.ModuleList(
            EnergyBlock(d_model, n_heads, ffn_mult) for _ in range(n_energy_layers)
        )
        self.head = nn.Sequential(
            nn.RMSNorm(d_model),
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, action_dim),
        )
        # Fixed tables, rebuilt from the config: not part of the state dict.
        self.register_buffer(
            "action_pos", sinusoidal_positions(horizon, d_model)[None], persistent=False
        )
        t_obs = torch.arange(n_obs_steps)
        t_act = torch.arange(horizon)
        self.register_buffer("obs_mask", t_obs[:, None] >= t_obs[None, :], persistent=False)
        # Action r (time t-To+1+r) may see frame c (time t-To+1+c) only if r >= c.
        self.register_buffer("cross_mask", t_act[:, None] >= t_obs[None, :], persistent=False)

    def encode_context(self, frames: Tensor) -> Tensor:
        """Per-frame features (B, To, F) -> observation tokens (B, To, d)."""
        x = self.obs_in(frames) + self.obs_pos  # (B, To, d)
        for block in self.obs_blocks:
            x = block(x, self.obs_mask)
        return self.obs_norm(x)

    def forward(self, context: Tensor, chunk: Tensor, fused: bool = False) -> Tensor:
        """Observation tokens (B, To, d) and normalised chunk (B, Tp, Da) -> energy (B,)."""
        x = self.action_in(chunk) + self.action_pos  # (B, Tp, d)
        for block in self.energy_blocks:
            x = block(x, context, self.cross_mask, fused)
        return self.head(x).mean(dim=(1, 2))  # (B, Tp, Da) -> (B,)
