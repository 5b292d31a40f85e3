"""Per-key normalisation statistics of an episode store, computed in one streaming pass."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ebt_policy.datasets.metadata import STAT_NAMES
from ebt_policy.datasets.store import EpisodeStore
from ebt_policy.errors import DatasetError

__all__ = ["STAT_NAMES", "RunningStats", "compute_stats", "stats_from_metadata"]
DEFAULT_RESERVOIR = 100_000


class RunningStats:
    """Streaming min/max/mean/std (Chan et al. parallel update, float64) and quantiles.

    Quantiles come from a uniform random sample without replacement of at most ``reservoir``
    rows (bottom-k of random keys, seeded): **exact** while the data has at most ``reservoir``
    rows, an estimate from that bounded sample otherwise.
    """

    def __init__(self, reservoir: int = DEFAULT_RESERVOIR, seed: int = 0) -> None:
        self.reservoir = reservoir
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self._keys = np.empty(0)
        self._rows: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x`` (n, *dims)."""
        x = np.asarray(x, dtype=np.float64)
        n_b = len(x)
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.count == 0:
            self.mean, self.m2 = mean_b, m2_b
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            self._rows = np.empty((0, *x.shape[1:]))
        else:
            n = self.count + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / n)
            self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / n)
            self.min = np.minimum(self.min, x.min(axis=0))
            self.max = np.maximum(self.max, x.max(axis=0))
        self.count += n_b
        keys = np.concatenate([self._keys, self.rng.random(n_b)])
        rows = np.concatenate([self._rows, x], axis=0)
        if len(keys) > self.reservoir:
            keep = np.argpartition(keys, self.reservoir - 1)[: self.reservoir]
            keys, rows = keys[keep], rows[keep]
        self._keys, self._rows = keys, rows

    @property
    def exact_quantiles(self) -> bool:
        return self.count <= self.reservoir

    def result(self) -> dict[str, np.ndarray]:
        if self.count == 0:
            raise ValueError("no data")
        q01, q99 = np.quantile(self._rows, [0.01, 0.99], axis=0)
        return {
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": np.sqrt(self.m2 / self.count),
            "q01": q01,
            "q99": q99,
        }


def compute_stats(
    store: EpisodeStore | str | os.PathLike,
    keys: Iterable[str] | None = None,
    write: bool = True,
    reservoir: int = DEFAULT_RESERVOIR,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Statistics per key over all committed steps: ``key -> {"min","max","mean","std","q01",
    "q99"}``, float64 arrays of the per-step shape (per channel, shape (C,), for image keys).

    One streaming pass over each key. ``std`` is the population std (ddof=0). ``q01``/``q99`` are
    exact (numpy's linear interpolation) when a key has at most ``reservoir`` rows (pixels for
    images), else estimated from a seeded uniform sample of ``reservoir`` rows. ``keys`` defaults
    to ``action`` and every non-image key. With ``write`` the result is stored in the root
    metadata under ``stats`` (merged with statistics already there), with each key's ``count``
    and whether its quantiles are exact.
    """
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store, "r")
    if store.n_steps == 0:
        raise DatasetError(f"{store.path}: cannot compute statistics of an empty store")
    keys = [k for k in store.keys if not store.is_rgb(k)] if keys is None else list(keys)
    stats: dict[str, dict[str, np.ndarray]] = {}
    info: dict[str, dict[str, Any]] = {}
    for key in keys:
        rgb = store.is_rgb(key)
        running = RunningStats(reservoir=reservoir, seed=seed)
        # small blocks: the float64 copy of a uint8 image block is 8x its size
        for _, block in store.iter_blocks(key, block_bytes=8 * 2**20):
            if rgb:
                block = block.reshape(-1, block.shape[-1])  # (N*H*W, C): per-channel stats
            running.update(block)
        stats[key] = running.result()
        info[key] = {"count": running.count, "exact_quantiles": running.exact_quantiles}
    if write:
        writer = store
        if store.mode != "a":
            writer = EpisodeStore.open(store.path, "a", check_values=False)
        merged = dict(writer.metadata.get("stats") or {})
        for key, s in stats.items():
            merged[key] = {name: s[name].tolist() for name in STAT_NAMES} | info[key]
        writer.update_metadata(stats=merged)
    return stats


def stats_from_metadata(metadata: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The ``stats`` entry of a store's metadata as numpy arrays (as :func:`compute_stats`)."""
    raw = metadata.get("stats")
    if not isinstance(raw, Mapping):
        raise DatasetError("metadata has no 'stats' (run compute_stats on the store)")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, entry in raw.items():
        missing = [n for n in STAT_NAMES if n not in entry]
        if missing:
            raise DatasetError(f"metadata stats for key {key!r} lack {missing}")
        out[key] = {n: np.asarray(entry[n], dtype=np.float64) for n in STAT_NAMES}
    return out
