"""Episode store (zarr, Diffusion Policy layout), training windows, statistics, normaliser.

The torch-based parts (WindowDataset, Normalizer) are imported on first use, so tools that only
touch the store (``ebt-policy dataset info``) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ebt_policy.datasets.stats import compute_stats, stats_from_metadata
from ebt_policy.datasets.store import EpisodeStore, is_rgb_key

_LAZY = {
    "WindowDataset": "ebt_policy.datasets.sampler",
    "split_episodes": "ebt_policy.datasets.sampler",
    "Normalizer": "ebt_policy.datasets.normalize",
    "import_robomimic": "ebt_policy.datasets.robomimic",
}

__all__ = [
    "EpisodeStore",
    "Normalizer",
    "WindowDataset",
    "compute_stats",
    "import_robomimic",
    "is_rgb_key",
    "split_episodes",
    "stats_from_metadata",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
