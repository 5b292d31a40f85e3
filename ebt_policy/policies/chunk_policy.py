"""What the baselines share: the chunk-policy config fields, observation handling, the observation
token encoder and per-row noise.

The baselines (``policies/mse``, ``policies/diffusion``) see the observations exactly as EBT does:
the same normaliser, the same :class:`~ebt_policy.models.FrameEncoder` and, for the transformer
backbones, an observation temporal encoder of the same shape as EBT's (linear to d, learned
positions over To, causal self-attention blocks, RMSNorm). Only what turns the observation tokens
into a chunk differs, which is what a comparison between them should measure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebt_policy.errors import EbtPolicyError
from ebt_policy.models import FrameEncoder, Normalizer, ShapeMeta
from ebt_policy.models.transformer import SelfAttentionBlock
from ebt_policy.policies.base import ChunkPrediction, Policy
from ebt_policy.policies.factory import Preset
from ebt_policy.policies.validation import check_types, check_window_and_images, require

ACTION_KEY = "action"


@dataclass
class ChunkPolicyConfig:
    """Fields every baseline has: window sizes and the image encoder (as in EBTPolicyConfig).

    Subclasses set ``name`` and add their own fields.
    """

    name: str = "chunk"
    preset: str = "custom"  # the preset this config started from (informational)
    n_obs_steps: int = 2  # To
    horizon: int = 16  # Tp, the chunk length
    n_action_steps: int = 8  # Ta
    image_feature_dim: int = 64
    resnet_width: int = 64  # 64 = the real ResNet-18
    n_keypoints: int = 32
    crop_fraction: float = 0.9
    color_jitter: float = 0.2

    def check_common(self, name: str) -> None:
        """Validate the shared fields (ConfigError naming the field); ``name`` is the policy's."""
        where = f"{name} policy config"
        check_types(self, where)

        def need(ok: bool, what: str) -> None:
            require(ok, where, what)

        need(self.name == name, f"name must be {name!r}, got {self.name!r}")
        check_window_and_images(self, need)


@dataclass
class BackboneConfig(ChunkPolicyConfig):
    """A chunk-policy config with EBT's two backbones: a transformer or an MLP (same sizes as
    EBTPolicyConfig's, ``n_layers`` playing ``n_energy_layers``)."""

    d_model: int = 64
    n_heads: int = 4
    n_obs_layers: int = 1  # observation temporal encoder blocks
    n_layers: int = 2  # blocks that turn observation tokens into the chunk
    ffn_mult: int = 4
    mlp_hidden: int = 256  # MLP backbone: width and number of SiLU hidden layers
    mlp_layers: int = 3

    def check_backbone(self, name: str) -> None:
        """Validate the shared and the backbone fields (ConfigError naming the field)."""
        self.check_common(name)
        where = f"{name} policy config"
        for key in ("d_model", "n_heads", "ffn_mult", "mlp_hidden", "mlp_layers"):
            require(getattr(self, key) >= 1, where, f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_obs_layers", "n_layers"):
            require(getattr(self, key) >= 0, where, f"{key} must be >= 0, got {getattr(self, key)}")
        require(
            self.d_model % self.n_heads == 0,
            where,
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )


def ebt_backbone_fields(ebt_config: Any) -> dict[str, Any]:
    """The :class:`BackboneConfig` fields of an EBT config (``n_layers`` from its
    ``n_energy_layers``), so a baseline preset is built with exactly EBT's sizes."""
    names = {f.name for f in dataclasses.fields(BackboneConfig)} - {"name", "preset", "n_layers"}
    out = {name: getattr(ebt_config, name) for name in sorted(names)}
    out["n_layers"] = ebt_config.n_energy_layers
    return out


def presets_from_ebt(config_cls: type, kind_field: str) -> dict[str, Preset]:
    """A baseline's presets with EBT's names, sizes and training recipes; ``kind_field`` (e.g.
    ``"backbone"``) takes EBT's ``energy`` kind (transformer or mlp)."""
    from ebt_policy.policies.ebt.presets import EBT_PRESETS

    return {
        name: Preset(
            policy=config_cls(
                preset=name, **{kind_field: ebt.policy.energy}, **ebt_backbone_fields(ebt.policy)
            ),
            train=ebt.train,
        )
        for name, ebt in EBT_PRESETS.items()
        if not name.endswith("-reference")  # EBT's training-recipe variants: same sizes
    }


class ObsTokenEncoder(nn.Module):
    """Observation temporal encoder, shaped as EBT's: frames (B, To, F) -> tokens (B, To, d)."""

    def __init__(
        self,
        frame_dim: int,
        n_obs_steps: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ffn_mult: int,
    ) -> None:
        super().__init__()
        self.obs_in = nn.Linear(frame_dim, d_model)
        self.obs_pos = nn.Parameter(torch.randn(1, n_obs_steps, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d_model, n_heads, ffn_mult) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model)
        t = torch.arange(n_obs_steps)
        self.register_buffer("causal", t[:, None] >= t[None, :], persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.obs_in(frames) + self.obs_pos  # (B, To, d)
        for block in self.blocks:
            # first-order gradients only (no descent to differentiate), so fused kernels are fine
            x = block(x, self.causal, fused=True)
        return self.norm(x)


def action_obs_mask(horizon: int, n_obs_steps: int) -> Tensor:
    """(Tp, To) bool: action r (time t-To+1+r) may see frame c only if r >= c, as in EBT."""
    return torch.arange(horizon)[:, None] >= torch.arange(n_obs_steps)[None, :]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of (possibly fractional) timesteps t (B,)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angles = t.float()[:, None] * freq[None, :]  # (B, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class ChunkPolicy(nn.Module, Policy):
    """Base of the baselines: normaliser, frame encoder, observation checks, per-row generators.

    Subclasses build their network in ``__init__`` after calling this one, and implement
    ``compute_loss`` and ``predict_chunk`` with the helpers below.
    """

    def __init__(
        self,
        config: ChunkPolicyConfig,
        shape_meta: ShapeMeta | Mapping[str, Any],
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.shapes = ShapeMeta.coerce(shape_meta)
        self.shape_meta = self.shapes.to_dict()
        self.n_obs_steps = config.n_obs_steps
        self.horizon = config.horizon
        self.n_action_steps = config.n_action_steps
        self._low_dim_shapes = self.shapes.low_dim
        self._rgb_shapes = self.shapes.rgb
        self.low_dim_keys = list(self._low_dim_shapes)
        self.rgb_keys = list(self._rgb_shapes)
        self.action_dim = self.shapes.action_dim
        if stats is None:  # zeroed statistics, to be filled by load_state_dict
            self.normalizer = Normalizer.from_shape_meta(self.shapes)
        else:
            keys = [*self.low_dim_keys, *self.rgb_keys, ACTION_KEY]
            self.normalizer = Normalizer.from_stats(stats, keys, rgb_keys=self.rgb_keys)
        self.obs_encoder = FrameEncoder(
            self._low_dim_shapes,
            self._rgb_shapes,
            image_feature_dim=config.image_feature_dim,
            resnet_width=config.resnet_width,
            n_keypoints=config.n_keypoints,
            crop_fraction=config.crop_fraction,
            color_jitter=config.color_jitter,
        )
        self._row_generators: dict[int, torch.Generator] = {}
        # observation novelty (policies/novelty.py), read by load_policy from the checkpoint's
        # novelty.safetensors when it has one
        self.novelty: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ observations
    def _normalize_obs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Robot units -> network inputs; images come out channels first (B, To, C, H, W)."""
        out = {key: self.normalizer.normalize(key, obs[key].float()) for key in self.low_dim_keys}
        for key in self.rgb_keys:
            img = self.normalizer.normalize(key, obs[key])  # uint8 -> float [-1, 1]
            C = self._rgb_shapes[key][0]
            if img.shape[-1] == C and img.shape[2] != C:
                img = img.permute(0, 1, 4, 2, 3)  # (B, To, H, W, C) -> (B, To, C, H, W)
            out[key] = img.contiguous()
        return out

    def frames(self, obs: dict[str, Tensor], augment: bool = False) -> Tensor:
        """Observations in robot units -> per-frame features (B, To, F)."""
        return self.obs_encoder(self._normalize_obs(obs), augment=augment)

    def training_batch(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        """A collated WindowDataset batch -> (obs on the device, normalised target (B, Tp, Da)).

        Padded actions (``action_pad``) are the episode's edge actions repeated and count in the
        loss, as in EBT and Diffusion Policy: they teach the policy to hold still at the end.
        """
        dev = self.device
        keys = self.low_dim_keys + self.rgb_keys
        obs = {k: batch["obs"][k].to(dev, non_blocking=True) for k in keys}
        action = batch[ACTION_KEY].to(dev, non_blocking=True).float()
        if action.shape[1:] != (self.horizon, self.action_dim):
            raise EbtPolicyError(
                f"batch['action'] has shape {tuple(action.shape)}; expected "
                f"(B, {self.horizon}, {self.action_dim})"
            )
        return obs, self.normalizer.normalize(ACTION_KEY, action)

    def obs_tensors(self, obs_window: Any) -> dict[str, Tensor]:
        """Check ``obs_window`` (EbtPolicyError naming the key and what was expected) and move it
        to the policy's device, low-dim keys reshaped to their per-frame shapes."""
        keys = self.low_dim_keys + self.rgb_keys
        if not isinstance(obs_window, Mapping):
            raise EbtPolicyError(
                f"obs_window: expected a dict of key -> array (B, {self.n_obs_steps}, ...) with "
                f"keys {keys}, got {type(obs_window).__name__}"
            )
        dev = self.device
        out = {}
        batch: tuple[str, int] | None = None  # the first key's batch size
        for key in keys:
            if key not in obs_window:
                raise EbtPolicyError(
                    f"observation lacks key {key!r} (policy keys: "
                    f"{keys}, got {sorted(map(str, obs_window))})"
                )
            arr = _numeric_array(key, obs_window[key])
            per_frame = self._low_dim_shapes.get(key)
            if per_frame is None:
                C, H, W = self._rgb_shapes[key]
                ok = (
                    arr.ndim == 5
                    and arr.shape[1] == self.n_obs_steps
                    and (arr.shape[2:] in ((H, W, C), (C, H, W)))
                )
                expect = f"(B, {self.n_obs_steps}, {H}, {W}, {C})"
            else:
                ok = (
                    arr.ndim >= 2
                    and arr.shape[1] == self.n_obs_steps
                    and (math.prod(arr.shape[2:]) == math.prod(per_frame))
                )
                expect = f"(B, {self.n_obs_steps}, {', '.join(map(str, per_frame))})"
            if not ok:
                raise EbtPolicyError(
                    f"observation {key!r} has shape {arr.shape}; expected {expect}"
                )
            if arr.shape[0] == 0:
                raise EbtPolicyError(f"observation {key!r} has batch size 0; expected at least 1")
            if batch is None:
                batch = (key, arr.shape[0])
            elif arr.shape[0] != batch[1]:
                raise EbtPolicyError(
                    f"observation {key!r} has batch size {arr.shape[0]} but {batch[0]!r} has "
                    f"{batch[1]}; every key needs the same batch size"
                )
            if per_frame is not None:
                if not np.isfinite(arr).all():
                    raise EbtPolicyError(f"observation {key!r} contains NaN or Inf")
                arr = arr.reshape(arr.shape[0], self.n_obs_steps, *per_frame)
            out[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)
        return out

    # ------------------------------------------------------------------ per-row noise
    def reset(self) -> None:
        """Forget per-row episode state (the generators of :meth:`start_episode`)."""
        self._row_generators.clear()

    def start_episode(self, row: int, seed: int | None) -> None:
        """Seed the sampling noise of batch row ``row`` for an episode played with env ``seed``,
        so an episode's chunks do not depend on which others share the batch."""
        if seed is None:
            self._row_generators.pop(int(row), None)
            return
        self._row_generators[int(row)] = torch.Generator().manual_seed(int(seed))

    def row_generators(self, B: int, rows: Sequence[int] | None) -> list[torch.Generator] | None:
        """One CPU generator per batch element for ``rows`` (None without rows); a row with no
        episode seed gets one seeded from the global RNG."""
        if rows is None:
            return None
        rows = [int(r) for r in rows]
        if len(rows) != B:
            raise EbtPolicyError(f"rows has {len(rows)} entries but the observation batch is {B}")
        out = []
        for r in rows:
            gen = self._row_generators.get(r)
            if gen is None:
                gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
            out.append(gen)
        return out

    # ------------------------------------------------------------------ output
    def chunk_prediction(
        self,
        chunk: Tensor,
        steps: int | np.ndarray,
        t0: float,
        obs_window: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> ChunkPrediction:
        """Normalised chunk (B, Tp, Da) -> a ChunkPrediction in robot units; ``steps`` per
        sample or one count for all, ``fields`` the rest (energy, grad_norm, uncertainty).
        With a novelty index and the ``obs_window`` planned from, ``novelty`` is its score
        (counted in ``latency_s``)."""
        if self.novelty is not None and obs_window is not None:
            fields["novelty"] = self.novelty.score(obs_window)
        with torch.no_grad():
            chunk = self.normalizer.unnormalize(ACTION_KEY, chunk)  # (B, Tp, Da)
        chunk_np = chunk.float().cpu().numpy()
        start = self.n_obs_steps - 1
        return ChunkPrediction(
            actions=chunk_np[:, start : start + self.n_action_steps],
            chunk=chunk_np,
            steps=np.broadcast_to(np.asarray(steps, dtype=np.int64), chunk_np.shape[:1]).copy(),
            latency_s=time.perf_counter() - t0,
            **fields,
        )

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Same as ``compute_loss`` (so DistributedDataParallel can wrap the policy)."""
        return self.compute_loss(batch)  # type: ignore[attr-defined]


def _numeric_array(key: str, value: Any) -> np.ndarray:
    """``value`` as a numeric numpy array (EbtPolicyError naming ``key`` otherwise)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise EbtPolicyError(f"observation {key!r}: not an array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise EbtPolicyError(
            f"observation {key!r} has dtype {arr.dtype}; expected numbers (float32, or uint8 "
            "for images)"
        )
    return arr
