"""MSEPolicy: regress the normalised chunk in one forward pass; the "no generative model" control.

Trained on the mean squared error to the demonstrated chunk, it predicts the conditional mean of
the chunks, so where the demonstrations split between two modes (the twogoal task) it plans the
average of them, which is what the comparison with EBT is meant to show.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebt_policy.models import ShapeMeta
from ebt_policy.models.transformer import EnergyBlock, sinusoidal_positions
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.policies.chunk_policy import ChunkPolicy, ObsTokenEncoder, action_obs_mask
from ebt_policy.policies.mse.configuration import MSEPolicyConfig


def mlp(d_in: int, hidden: int, n_layers: int, d_out: int) -> nn.Sequential:
    """``n_layers`` SiLU hidden layers of width ``hidden``, then a linear output."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class ChunkDecoder(nn.Module):
    """Observation tokens (B, To, d) -> chunk (B, Tp, Da) with EBT's blocks, queries learned."""

    def __init__(self, cfg: MSEPolicyConfig, action_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.queries = nn.Parameter(torch.randn(1, cfg.horizon, d) * 0.02)
        self.blocks = nn.ModuleList(
            EnergyBlock(d, cfg.n_heads, cfg.ffn_mult) for _ in range(cfg.n_layers)
        )
        self.head = nn.Sequential(
            nn.RMSNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, action_dim)
        )
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.horizon, d)[None], persistent=False
        )
        self.register_buffer(
            "cross_mask", action_obs_mask(cfg.horizon, cfg.n_obs_steps), persistent=False
        )

    def forward(self, tokens: Tensor) -> Tensor:
        x = (self.queries + self.positions).expand(tokens.shape[0], -1, -1)  # (B, Tp, d)
        for block in self.blocks:
            x = block(x, tokens, self.cross_mask, fused=True)
        return self.head(x)  # (B, Tp, Da)


class MSEPolicy(ChunkPolicy):
    """MSE chunk regression on EBT's backbone (see :class:`MSEPolicyConfig`)."""

    name = "mse"

    def __init__(
        self,
        config: MSEPolicyConfig,
        shape_meta: ShapeMeta | Mapping[str, Any],
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(config, shape_meta, stats)
        frame_dim = self.obs_encoder.out_dim
        if config.backbone == "mlp":
            self.net: nn.Module = mlp(
                config.n_obs_steps * frame_dim,
                config.mlp_hidden,
                config.mlp_layers,
                config.horizon * self.action_dim,
            )
        else:
            self.net = nn.Sequential(
                ObsTokenEncoder(
                    frame_dim, config.n_obs_steps, config.d_model, config.n_heads,
                    config.n_obs_layers, config.ffn_mult,
                ),
                ChunkDecoder(config, self.action_dim),
            )  # fmt: skip

    def predict_normalized(self, obs: dict[str, Tensor], augment: bool = False) -> Tensor:
        """Observations in robot units -> normalised chunk (B, Tp, Da)."""
        frames = self.frames(obs, augment=augment)  # (B, To, F)
        if self.config.backbone == "mlp":
            out = self.net(frames.flatten(1))  # (B, To*F) -> (B, Tp*Da)
            return out.view(-1, self.horizon, self.action_dim)  # (B, Tp, Da)
        return self.net(frames)

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """MSE to the demonstrated chunk in normalised units (``generator`` unused: no noise)."""
        obs, target = self.training_batch(batch)
        pred = self.predict_normalized(obs, augment=self.training)
        loss = nn.functional.mse_loss(pred.float(), target.float())
        return loss, {}

    def predict_chunk(
        self,
        obs_window: dict[str, np.ndarray],
        rows: Sequence[int] | None = None,
    ) -> ChunkPrediction:
        """One forward pass; ``steps`` reports 1 network evaluation per chunk."""
        t0 = time.perf_counter()
        obs = self.obs_tensors(obs_window)
        with torch.no_grad():
            chunk = self.predict_normalized(obs).clamp(-1.0, 1.0)
        return self.chunk_prediction(chunk, 1, t0, obs_window)
