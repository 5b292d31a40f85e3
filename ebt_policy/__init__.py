"""ebt-policy: energy-based transformer policies for robot learning."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"

__all__ = ["__version__", "load_policy"]


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained policy from a run or checkpoint directory, in eval mode on ``device``.

    Imported lazily (torch and the models load on first call) so ``import ebt_policy`` stays
    cheap; see :func:`ebt_policy.policies.checkpoint.load_policy`.
    """
    from ebt_policy.policies.checkpoint import load_policy as _load_policy

    return _load_policy(path, device=device)
