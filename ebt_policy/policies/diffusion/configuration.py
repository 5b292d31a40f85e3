"""Diffusion Policy configs: the noise schedule and sampler (one nested :class:`DiffusionSchedule`),
the transformer / MLP denoiser (``diffusion``) and the 1-D conditional U-Net (``diffusion-unet``).

The schedule is Diffusion Policy's: DDPM with 100 training steps, the squared-cosine beta schedule
(``squaredcos_cap_v2``), epsilon prediction and samples clipped to [-1, 1]; it plans with DDPM over
all 100 steps or, as the fast variant, DDIM over 10 (``set_sampler`` / ``ebt-policy eval
--sampler ddim --sampler-steps 10``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebt_policy.policies.chunk_policy import BackboneConfig, ChunkPolicyConfig
from ebt_policy.policies.validation import check_types, nested_config, require

SAMPLERS = ("ddpm", "ddim")
DEFAULT_SAMPLER_STEPS = {"ddpm": 100, "ddim": 10}
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample")
DENOISERS = ("transformer", "mlp")


@dataclass
class DiffusionSchedule:
    """Noise schedule (diffusers' ``DDPMScheduler`` arguments) and the inference sampler."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # what the denoiser predicts: the noise, or the clean chunk
    clip_sample: bool = True  # clip the predicted clean chunk to [-1, 1] at every step
    sampler: str = "ddpm"  # "ddpm" | "ddim"
    sampler_steps: int = 100  # denoising steps per chunk at inference

    def __post_init__(self) -> None:
        where = "diffusion schedule"
        check_types(self, where)
        require(
            self.num_train_timesteps >= 1,
            where,
            f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}",
        )
        for key, allowed in (
            ("beta_schedule", BETA_SCHEDULES),
            ("prediction_type", PREDICTION_TYPES),
            ("sampler", SAMPLERS),
        ):
            value = getattr(self, key)
            require(value in allowed, where, f"{key} must be one of {allowed}, got {value!r}")
        require(
            1 <= self.sampler_steps <= self.num_train_timesteps,
            where,
            f"sampler_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
            f"got {self.sampler_steps}",
        )


@dataclass
class DiffusionPolicyConfig(BackboneConfig):
    """Diffusion Policy with EBT's backbone: ``denoiser="transformer"`` is a DiT-style denoiser
    (one token per action, cross-attention to the observation tokens of EBT's temporal encoder,
    timestep by adaptive RMSNorm), ``"mlp"`` an MLP over (observation window, noisy chunk,
    timestep embedding) sized like EBT's MLP energy."""

    name: str = "diffusion"
    denoiser: str = "transformer"  # "transformer" | "mlp"
    schedule: DiffusionSchedule = field(default_factory=DiffusionSchedule)

    def __post_init__(self) -> None:
        self.check_backbone("diffusion")
        self.schedule = nested_config(
            DiffusionSchedule, self.schedule, "diffusion policy config: schedule"
        )
        require(
            self.denoiser in DENOISERS,
            "diffusion policy config",
            f"denoiser must be one of {DENOISERS}, got {self.denoiser!r}",
        )


@dataclass
class DiffusionUnetPolicyConfig(ChunkPolicyConfig):
    """Diffusion Policy's 1-D temporal U-Net, conditioned by FiLM on the flattened observation
    features of the To frames (EBT's frame encoder) and the timestep embedding.

    ``down_dims`` are the channels per level; the chunk is halved in time at each level but the
    last, so ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)``.
    """

    name: str = "diffusion-unet"
    down_dims: tuple[int, ...] = (256, 512, 1024)  # the published size
    kernel_size: int = 5
    n_groups: int = 8  # GroupNorm groups (must divide every entry of down_dims)
    step_embed_dim: int = 128  # timestep embedding width
    schedule: DiffusionSchedule = field(default_factory=DiffusionSchedule)

    def __post_init__(self) -> None:
        where = "diffusion-unet policy config"
        self.down_dims = tuple(self.down_dims)  # a JSON list after a checkpoint round trip
        self.check_common("diffusion-unet")
        self.schedule = nested_config(DiffusionSchedule, self.schedule, f"{where}: schedule")
        dims = self.down_dims

        def need(ok: bool, what: str) -> None:
            require(ok, where, what)

        need(
            len(dims) >= 1 and all(isinstance(d, int) and d >= 1 for d in dims),
            f"down_dims must be positive ints, got {list(dims)}",
        )
        need(
            all(d % self.n_groups == 0 for d in dims) and self.n_groups >= 1,
            f"n_groups ({self.n_groups}) must divide every down_dims entry {list(dims)}",
        )
        need(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            f"kernel_size must be odd, got {self.kernel_size}",
        )
        need(self.step_embed_dim >= 2, f"step_embed_dim must be >= 2, got {self.step_embed_dim}")
        factor = 2 ** (len(dims) - 1)
        need(
            self.horizon % factor == 0,
            f"horizon ({self.horizon}) must be divisible by 2 ** (len(down_dims) - 1) = {factor}",
        )
