"""EngineOptions: how the inference engine plans a chunk (speed and search options).

These are runtime choices, not part of the model: they are not saved in checkpoints. The
stopping rule's step cap, gradient-norm and displacement limits stay in the policy's
``DescentConfig`` (the checkpoint's own rule); the energy-change stop is an engine option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ebt_policy.errors import ConfigError
from ebt_policy.policies.validation import check_types, require


@dataclass
class EngineOptions:
    """Options of :class:`~ebt_policy.inference.InferenceEngine`; the defaults are the exact
    mode (eager fp32, the policy's fixed or adaptive rule, cold start, one candidate), which
    plans bit for bit what the reference descent plans."""

    compile: bool = False  # torch.compile the descent step (first order, torch.func gradient)
    # with compile, a fixed-step chunk's graph gets inductor's C++ wrapper instead of its Python
    # one (fewer host instructions per kernel launch: faster small models, a longer first
    # compile; README "Inference" has both)
    cpp_wrapper: bool = False
    bf16: bool = False  # bfloat16 autocast for the observation encoder and energy network
    cuda_graph: bool = False  # on CUDA, replay a captured fixed-step descent (no early stop)
    # Warm start: the next chunk starts from the previous one shifted by the executed actions
    # (tail: the last action repeated) plus warm_noise * N(0, I); noise after reset().
    warm_start: bool = False
    warm_noise: float = 0.05  # in normalised action units ([-1, 1] spans the demonstrations)
    warm_shift: int = 0  # actions executed between two plans of a row (0: the policy's Ta)
    best_of: int = 1  # K initialisations per row in one batch; the lowest final energy wins
    min_energy_change: float = 0.0  # stop once |dE| / |E| of a step falls below this (0: off)
    # a row whose energy rises from one evaluated point to the next stops there and returns
    # the lowest-energy point it evaluated (EnergyDescent.infer's reject_uphill)
    reject_uphill: bool = False
    # Turn parameter gradients off while planning (only the chunk needs one); restored after.
    freeze: bool = True

    def __post_init__(self) -> None:
        where = "engine options"
        check_types(self, where)

        def need(ok: bool, what: str) -> None:
            require(ok, where, what)

        need(self.compile or not self.cpp_wrapper, "cpp_wrapper needs compile=True")
        need(self.best_of >= 1, f"best_of must be >= 1, got {self.best_of}")
        need(self.warm_shift >= 0, f"warm_shift must be >= 0, got {self.warm_shift}")
        for key in ("warm_noise", "min_energy_change"):
            value = getattr(self, key)
            need(math.isfinite(value) and value >= 0, f"{key} must be >= 0, got {value}")

    @property
    def calibrated(self) -> bool:
        """Whether chunks come from a distribution a calibration can measure (cold start, no
        energy-change or uphill stop; the number of candidates a calibration records itself,
        ``Calibration.best_of``); compile, bf16 and graphs change only rounding."""
        return not self.warm_start and self.min_energy_change == 0.0 and not self.reject_uphill


def check_bf16(device_type: str) -> None:
    """ConfigError when bfloat16 autocast is not available on ``device_type``."""
    import torch

    ok = torch.amp.is_autocast_available(device_type)
    if ok and device_type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    if not ok:
        raise ConfigError(f"engine options: bf16 autocast is not supported on {device_type!r}")
