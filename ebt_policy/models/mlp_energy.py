"""The cheap energy: an MLP over the flattened observation window and the flattened chunk.

E(obs, chunk) = mean(MLP([obs_window ‖ chunk])), the MLP having SiLU hidden layers and one output
per chunk entry (Tp x Da), so the energy is a per-output mean like the transformer's. It trains
an order of magnitude faster than the transformer on CPU (method.md, last section), which makes
it the quickstart default.

The first layer is split into an observation part and a chunk part. That is the same linear map
on the concatenation, but the observation part is computed once per batch in ``encode_context``
instead of once per descent step.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPEnergy(nn.Module):
    """MLP energy over (flattened obs window, flattened chunk) -> (B,)."""

    def __init__(
        self,
        frame_dim: int,
        action_dim: int,
        n_obs_steps: int,
        horizon: int,
        hidden: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.action_dim = action_dim
        self.horizon = horizon
        self.obs_in = nn.Linear(n_obs_steps * frame_dim, hidden)
        self.chunk_in = nn.Linear(horizon * action_dim, hidden, bias=False)
        layers: list[nn.Module] = [nn.SiLU()]
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, horizon * action_dim)

    def encode_context(self, frames: Tensor) -> Tensor:
        """Per-frame features (B, To, F) -> observation part of the first layer (B, hidden)."""
        return self.obs_in(frames.flatten(1))  # (B, To*F) -> (B, hidden)

    def forward(self, context: Tensor, chunk: Tensor, fused: bool = False) -> Tensor:
        """Context (B, hidden) and normalised chunk (B, Tp, Da) -> energy (B,).

        ``fused`` is accepted for interface parity with the transformer and ignored.
        """
        h = self.trunk(context + self.chunk_in(chunk.flatten(1)))  # (B, hidden)
        # mean_j(out(h)_j) computed as h . mean_j(W_j) + mean(b): the same function and gradients
        # as the per-output mean, without the (hidden x Tp*Da) matmuls in every descent step.
        return h @ self.out.weight.mean(dim=0) + self.out.bias.mean()  # (B,)
