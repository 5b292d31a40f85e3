"""EBT-Policy: an energy network over (observation window, action chunk) plus the energy descent.

``EBTPolicyConfig`` is the whole recipe as plain fields (JSON-able, validated in
``__post_init__``); :func:`ebt_policy.policies.make_policy_config` fills it from a preset.
``EBTPolicy`` holds the normaliser (statistics travel in ``state_dict``), the per-frame observation
encoder, the energy network (transformer or MLP) and the shared :class:`EnergyDescent`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebt_policy.errors import ConfigError, EbtPolicyError
from ebt_policy.models.mlp_energy import MLPEnergy
from ebt_policy.models.obs_encoder import FrameEncoder
from ebt_policy.models.transformer import TransformerEnergy
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.policies.descent import RMS_NORM_MODES, DescentConfig, EnergyDescent

ENERGY_KINDS = ("transformer", "mlp")
ACTION_KEY = "action"


@dataclass
class EBTPolicyConfig:
    """Everything that defines an EBT policy. Sizes are configuration (see the presets)."""

    name: str = "ebt"
    preset: str = "custom"  # the preset this config started from (informational)
    # --- shapes (method.md: To=2, Tp=16, Ta=8)
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    # --- energy network
    energy: str = "transformer"  # "transformer" | "mlp"
    d_model: int = 64
    n_heads: int = 4
    n_obs_layers: int = 1
    n_energy_layers: int = 2
    ffn_mult: int = 4
    mlp_hidden: int = 256  # MLP energy: width and number of SiLU hidden layers
    mlp_layers: int = 3
    # --- image encoder (used when the observations include cameras)
    image_feature_dim: int = 64
    resnet_width: int = 64  # 64 = the real ResNet-18
    n_keypoints: int = 32
    crop_fraction: float = 0.9  # training random crop (84 -> 76), centre crop at inference
    color_jitter: float = 0.2  # brightness / contrast / saturation strength, training only
    # --- energy descent (see ebt_policy.policies.descent.DescentConfig)
    alpha: float = 1000.0
    temperature: float = 1.0
    momentum: float = 0.9
    rms_norm: str = "sample"  # "sample" | "batch" (the reference's ablation) | "none"
    exp_energy_min: float = 0.01
    exp_energy_max: float = 10.0
    train_steps_base: int = 6
    train_steps_extra: int = 4
    sigma_max: float = 0.2
    sigma_min: float = 0.002
    alpha_random_scale: float = 1.5
    loss_final_step_only: bool = False
    max_steps: int = 2  # inference; max_steps=20 with min_grad=1e-3 is the adaptive mode
    min_grad: float = 1e-3
    # Inference may use fused attention kernels (first-order gradients only); training never does.
    fused_attention_inference: bool = True

    def __post_init__(self) -> None:
        _check_types(self)

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"policy config: {what}")

        need(self.name == "ebt", f"name must be 'ebt', got {self.name!r}")
        need(
            self.energy in ENERGY_KINDS,
            f"energy must be one of {ENERGY_KINDS}, got {self.energy!r}",
        )
        need(self.n_obs_steps >= 1, f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        need(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        need(
            1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1,
            f"n_action_steps must be in [1, horizon - n_obs_steps + 1] = "
            f"[1, {self.horizon - self.n_obs_steps + 1}], got {self.n_action_steps}",
        )
        for key in ("d_model", "n_heads", "ffn_mult", "mlp_hidden", "mlp_layers"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_obs_layers", "n_energy_layers"):
            need(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")
        need(
            self.d_model % self.n_heads == 0,
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
        for key in ("image_feature_dim", "resnet_width", "n_keypoints"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        need(
            0 < self.crop_fraction <= 1,
            f"crop_fraction must be in (0, 1], got {self.crop_fraction}",
        )
        need(self.color_jitter >= 0, f"color_jitter must be >= 0, got {self.color_jitter}")
        need(
            self.rms_norm in RMS_NORM_MODES,
            f"rms_norm must be one of {RMS_NORM_MODES}, got {self.rms_norm!r}",
        )
        self.descent_config()  # validates the descent fields

    def descent_config(self) -> DescentConfig:
        """The descent settings of this config as a :class:`DescentConfig`."""
        names = {f.name for f in dataclasses.fields(DescentConfig)} - {"rms_eps"}
        return DescentConfig(**{n: getattr(self, n) for n in names})


def _check_types(cfg: Any) -> None:
    """ConfigError naming the field whose value has the wrong type (ints pass as floats)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        expected = {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
        if expected is None:  # a field type this check does not know: leave it to __post_init__
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, f.name, float(value))
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"policy config: {f.name} must be {expected.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )


def _parse_shape_meta(shape_meta: dict[str, Any]) -> tuple[dict, dict, int]:
    """-> (low-dim key -> shape, rgb key -> (C, H, W), action dim), with clear errors."""
    try:
        obs_meta = shape_meta["obs"]
        action_shape = list(shape_meta["action"]["shape"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"shape_meta must hold 'obs' and 'action': {{'shape': [Da]}}; missing {exc}"
        ) from None
    if len(action_shape) != 1 or action_shape[0] < 1:
        raise ConfigError(f"shape_meta: action shape must be [Da], got {action_shape}")
    if not obs_meta:
        raise ConfigError(
            "shape_meta: 'obs' is empty; the policy needs at least one observation key"
        )
    low_dim: dict[str, tuple[int, ...]] = {}
    rgb: dict[str, tuple[int, int, int]] = {}
    for key, meta in obs_meta.items():
        shape = tuple(int(s) for s in meta.get("shape", ()))
        kind = meta.get("type", "low_dim")
        if kind == "low_dim":
            low_dim[key] = shape
        elif kind == "rgb":
            if len(shape) != 3:
                raise ConfigError(
                    f"shape_meta: rgb key {key!r} needs a 3-d shape, got {list(shape)}"
                )
            rgb[key] = _chw(shape)
        else:
            raise ConfigError(
                f"shape_meta: key {key!r} has type {kind!r}; expected 'low_dim' or 'rgb'"
            )
    return low_dim, rgb, int(action_shape[0])


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Images are stored HWC (CONTRACTS A); accept CHW too when unambiguous."""
    if shape[-1] in (1, 3):
        return (shape[2], shape[0], shape[1])
    return (shape[0], shape[1], shape[2])


class EBTPolicy(nn.Module):
    """EBT-Policy (implements :class:`ebt_policy.policies.base.Policy`).

    Args:
        config: the recipe.
        shape_meta: ``{"obs": {key: {"shape", "type"}}, "action": {"shape": [Da]}}``.
        stats: per-key statistics from ``compute_stats`` (robot units). ``None`` builds an empty
            normaliser for ``load_state_dict`` to fill (used before that, it raises ConfigError).
    """

    name = "ebt"

    def __init__(
        self,
        config: EBTPolicyConfig,
        shape_meta: dict[str, Any],
        stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from ebt_policy.datasets import Normalizer  # lazy: datasets is a sibling part

        self.config = config
        self.shape_meta = shape_meta
        self.n_obs_steps = config.n_obs_steps
        self.horizon = config.horizon
        self.n_action_steps = config.n_action_steps
        low_dim, rgb, action_dim = _parse_shape_meta(shape_meta)
        self.low_dim_keys = list(low_dim)
        self.rgb_keys = list(rgb)
        self.action_dim = action_dim
        self._low_dim_shapes = low_dim
        self._rgb_shapes = rgb
        if stats is None:
            # Zeroed statistics, to be filled by load_state_dict (using them before raises).
            self.normalizer = Normalizer.from_shape_meta(shape_meta)
        else:
            self.normalizer = Normalizer.from_stats(
                stats, [*self.low_dim_keys, *self.rgb_keys, ACTION_KEY], rgb_keys=self.rgb_keys
            )
        self.obs_encoder = FrameEncoder(
            low_dim,
            rgb,
            image_feature_dim=config.image_feature_dim,
            resnet_width=config.resnet_width,
            n_keypoints=config.n_keypoints,
            crop_fraction=config.crop_fraction,
            color_jitter=config.color_jitter,
        )
        frame_dim = self.obs_encoder.out_dim
        if config.energy == "mlp":
            self.energy: nn.Module = MLPEnergy(
                frame_dim,
                action_dim,
                config.n_obs_steps,
                config.horizon,
                hidden=config.mlp_hidden,
                n_layers=config.mlp_layers,
            )
        else:
            self.energy = TransformerEnergy(
                frame_dim,
                action_dim,
                config.n_obs_steps,
                config.horizon,
                d_model=config.d_model,
                n_heads=config.n_heads,
                n_obs_layers=config.n_obs_layers,
                n_energy_layers=config.n_energy_layers,
                ffn_mult=config.ffn_mult,
            )
        self.descent = EnergyDescent(config.descent_config())
        self._row_generators: dict[int, torch.Generator] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _normalize_obs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Robot units -> network inputs: low-dim to [-1, 1], images to float [-1, 1].

        Images come out channels first, (B, To, C, H, W).
        """
        out = {}
        for key in self.low_dim_keys:
            out[key] = self.normalizer.normalize(key, obs[key].float())
        for key in self.rgb_keys:
            img = self.normalizer.normalize(key, obs[key])  # uint8 -> float [-1, 1]
            C = self._rgb_shapes[key][0]
            if img.shape[-1] == C and img.shape[2] != C:  # HWC -> CHW
                img = img.permute(0, 1, 4, 2, 3)  # (B, To, H, W, C) -> (B, To, C, H, W)
            out[key] = img.contiguous()
        return out

    def encode(self, obs: dict[str, Tensor], augment: bool = False) -> Tensor:
        """Normalised observations -> the energy's context (computed once per batch)."""
        frames = self.obs_encoder(obs, augment=augment)  # (B, To, F)
        return self.energy.encode_context(frames)

    def energy_fn(self, context: Tensor, fused: bool = False):
        """The energy as a function of the (normalised) chunk alone, for the descent."""
        return lambda chunk: self.energy(context, chunk, fused=fused)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Behaviour-cloning loss of one collated WindowDataset batch (robot units).

        Unrolls N descent steps from noise with second-order gradients (method.md, "Training").
        Observation augmentation follows ``self.training``.
        """
        dev = self.device
        obs = {
            k: batch["obs"][k].to(dev, non_blocking=True) for k in self.low_dim_keys + self.rgb_keys
        }
        action = batch[ACTION_KEY].to(dev, non_blocking=True).float()
        if action.shape[1:] != (self.horizon, self.action_dim):
            raise EbtPolicyError(
                f"batch['action'] has shape {tuple(action.shape)}; expected "
                f"(B, {self.horizon}, {self.action_dim})"
            )
        target = self.normalizer.normalize(ACTION_KEY, action)  # (B, Tp, Da) in [-1, 1]
        context = self.encode(self._normalize_obs(obs), augment=self.training)
        return self.descent.train_unroll(self.energy_fn(context), target, generator=generator)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`compute_loss` (so DistributedDataParallel can wrap the policy)."""
        return self.compute_loss(batch)

    # ------------------------------------------------------------------ inference
    def set_inference(self, max_steps: int | None = None, min_grad: float | None = None) -> None:
        """Change the inference stopping rule (e.g. ``max_steps=20, min_grad=1e-3``: adaptive).

        Updates the config too, so a policy saved afterwards plans the same way.
        """
        new = dataclasses.replace(
            self.config,
            max_steps=self.config.max_steps if max_steps is None else max_steps,
            min_grad=self.config.min_grad if min_grad is None else min_grad,
        )  # validates (ConfigError naming the field)
        self.config = new
        self.descent.config = new.descent_config()

    def reset(self) -> None:
        """Forget per-row episode state (the noise generators of :meth:`start_episode`)."""
        self._row_generators.clear()

    def start_episode(self, row: int, seed: int | None) -> None:
        """Seed the initial noise of batch row ``row`` for an episode played with env ``seed``.

        The evaluation runner calls this when a slot starts an episode and then passes
        ``rows=`` to :meth:`predict_chunk`. Since the network and the per-sample descent treat
        each sample on its own, an episode's chunks then do not depend on which other episodes
        share the batch, nor on how many workers run. ``seed=None`` returns the row to the
        global RNG.
        """
        if seed is None:
            self._row_generators.pop(int(row), None)
            return
        self._row_generators[int(row)] = torch.Generator().manual_seed(int(seed))

    def _initial_noise(
        self, B: int, generator: torch.Generator | None, rows: Sequence[int] | None
    ) -> Tensor:
        """x_0 ~ N(0, I), (B, Tp, Da): from ``generator``, else per row, else the global RNG."""
        shape = (self.horizon, self.action_dim)
        if generator is not None or rows is None:
            return torch.randn((B, *shape), device=self.device, generator=generator)
        rows = [int(r) for r in rows]
        if len(rows) != B:
            raise EbtPolicyError(f"rows has {len(rows)} entries but the observation batch is {B}")
        noise = [torch.randn(shape, generator=self._row_generators.get(r)) for r in rows]
        return torch.stack(noise).to(self.device)

    def _obs_to_tensors(self, obs_window: dict[str, np.ndarray]) -> dict[str, Tensor]:
        dev = self.device
        out = {}
        for key in self.low_dim_keys + self.rgb_keys:
            if key not in obs_window:
                raise EbtPolicyError(
                    f"observation lacks key {key!r} (policy keys: "
                    f"{self.low_dim_keys + self.rgb_keys}, got {sorted(obs_window)})"
                )
            arr = np.asarray(obs_window[key])
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
            if per_frame is not None:
                if not np.isfinite(arr).all():
                    raise EbtPolicyError(f"observation {key!r} contains NaN or Inf")
                arr = arr.reshape(arr.shape[0], self.n_obs_steps, *per_frame)
            out[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)
        return out

    def predict_chunk(
        self,
        obs_window: dict[str, np.ndarray],
        generator: torch.Generator | None = None,
        max_steps: int | None = None,
        min_grad: float | None = None,
        init_chunk: Tensor | np.ndarray | None = None,
        rows: Sequence[int] | None = None,
    ) -> ChunkPrediction:
        """Plan one chunk per batch element from an observation window in env units.

        Args:
            obs_window: key -> array (B, To, ...); images uint8 HWC.
            generator: seeds the initial noise x_0 ~ N(0, I) (device of the policy).
            max_steps, min_grad: override the config's inference stopping rule.
            init_chunk: start from this normalised chunk (B, Tp, Da) instead of noise.
            rows: which batch row (env slot) each element is; with ``generator=None`` each row
                draws its noise from the generator :meth:`start_episode` gave it.
        """
        t0 = time.perf_counter()
        obs = self._obs_to_tensors(obs_window)
        B = next(iter(obs.values())).shape[0]
        with torch.no_grad():
            context = self.encode(self._normalize_obs(obs), augment=False)
            if init_chunk is None:
                x0 = self._initial_noise(B, generator, rows)
            else:
                x0 = torch.as_tensor(init_chunk, dtype=torch.float32, device=context.device)
                if x0.shape != (B, self.horizon, self.action_dim):
                    raise EbtPolicyError(
                        f"init_chunk has shape {tuple(x0.shape)}; expected "
                        f"({B}, {self.horizon}, {self.action_dim})"
                    )
        fused = self.config.fused_attention_inference
        result = self.descent.infer(
            self.energy_fn(context, fused=fused), x0, max_steps=max_steps, min_grad=min_grad
        )
        with torch.no_grad():
            chunk = self.normalizer.unnormalize(ACTION_KEY, result.chunk)  # (B, Tp, Da) robot units
        chunk_np = chunk.float().cpu().numpy()
        start = self.n_obs_steps - 1
        return ChunkPrediction(
            actions=chunk_np[:, start : start + self.n_action_steps],
            chunk=chunk_np,
            energy=result.energy.float().cpu().numpy(),
            steps=result.steps.cpu().numpy(),
            grad_norm=result.grad_norm.cpu().numpy(),
            latency_s=time.perf_counter() - t0,
        )
