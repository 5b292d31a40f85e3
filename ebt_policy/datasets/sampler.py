"""Training windows over an episode store.

Convention (see ../shared/docs/method.md): for step t of an episode, the sample holds observation
frames t-To+1 .. t and the action chunk t-To+1 .. t-To+Tp (To = ``n_obs_steps``, Tp = ``horizon``).
Positions outside the episode repeat its first (before the start) or last (after the end) frame and
are flagged True in ``obs_pad`` / ``action_pad``. Every step of every selected episode is one
sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ebt_policy.datasets.store import ACTION_KEY, EpisodeStore
from ebt_policy.errors import ConfigError, DatasetError

DEFAULT_MEMORY_LIMIT = 2 * 2**30  # bytes; stores up to this size are copied into memory


def split_episodes(
    n_episodes: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, val), each sorted, by a seeded permutation.

    ``round(n * val_fraction)`` episodes go to validation, at least one when ``val_fraction > 0``
    and there are two or more episodes, and at least one episode always stays in training.
    """
    if n_episodes < 0:
        raise ConfigError(f"n_episodes must be >= 0, got {n_episodes}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n_episodes * val_fraction))
    if val_fraction > 0 and n_episodes >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, max(0, n_episodes - 1))
    perm = np.random.default_rng(seed).permutation(n_episodes)
    val = sorted(int(i) for i in perm[:n_val])
    train = sorted(int(i) for i in perm[n_val:])
    return train, val


def window_indices(
    t: int, length: int, n_obs_steps: int, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episode-relative frame indices and pad masks for step ``t`` of an episode of ``length``.

    Returns (obs_idx (To,), obs_pad (To,), act_idx (Tp,), act_pad (Tp,)); indices are clipped
    into [0, length-1], which repeats the first/last frame at the edges.
    """
    obs_raw = np.arange(t - n_obs_steps + 1, t + 1)
    act_raw = np.arange(t - n_obs_steps + 1, t - n_obs_steps + 1 + horizon)
    obs_pad = (obs_raw < 0) | (obs_raw >= length)
    act_pad = (act_raw < 0) | (act_raw >= length)
    return (
        np.clip(obs_raw, 0, length - 1),
        obs_pad,
        np.clip(act_raw, 0, length - 1),
        act_pad,
    )


def _gather_rows(store: EpisodeStore, key: str, rows: np.ndarray) -> np.ndarray:
    """``store.read(key)[rows]`` in one sequential pass of bounded blocks (peak memory: the
    result plus one block, not the whole array)."""
    out = np.empty((len(rows), *store.key_shape(key)), dtype=store.key_dtype(key))
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for start, block in store.iter_blocks(key):
        lo, hi = np.searchsorted(sorted_rows, [start, start + len(block)])
        if hi > lo:
            out[order[lo:hi]] = block[sorted_rows[lo:hi] - start]
    return out


class WindowDataset(Dataset):
    """torch Dataset of windows ``{"obs": {key: (To, ...)}, "action": (Tp, Da), "obs_pad",
    "action_pad"}`` over the episodes of a store (actions float32, low-dim obs float32, images
    uint8 HWC, pads bool; all in robot units: normalise in the policy).

    ``in_memory``: True copies the selected episodes' keys into RAM, False reads image keys
    lazily from zarr (low-dim keys and actions, being small, are always held in memory), None
    (default) copies everything when it fits in ``memory_limit_bytes``. The lazy store is opened
    on first use in each process, so DataLoader workers each get their own handle.
    """

    def __init__(
        self,
        store_or_path: EpisodeStore | str | os.PathLike,
        obs_keys: Sequence[str],
        n_obs_steps: int = 2,
        horizon: int = 16,
        episodes: Sequence[int] | None = None,
        in_memory: bool | None = None,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
        storage_options: dict | None = None,
    ) -> None:
        if n_obs_steps < 1:
            raise ConfigError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if horizon < n_obs_steps:
            raise ConfigError(f"horizon ({horizon}) must be >= n_obs_steps ({n_obs_steps})")
        if isinstance(store_or_path, EpisodeStore):
            store = store_or_path
        else:
            store = EpisodeStore.open(store_or_path, "r", storage_options=storage_options)
        self.path = store.path
        self._storage_options = storage_options
        self.obs_keys = list(obs_keys)
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.shape_meta = store.shape_meta(self.obs_keys)  # validates the keys
        self.rgb_keys = [k for k in self.obs_keys if store.is_rgb(k)]
        if store.n_episodes == 0:
            raise DatasetError(f"{store.path}: store has no episodes")
        all_ends = store.episode_ends
        if episodes is None:
            episodes = range(store.n_episodes)
        self.episodes = [int(e) for e in episodes]
        for e in self.episodes:
            if not 0 <= e < store.n_episodes:
                raise DatasetError(
                    f"{store.path}: episode index {e} out of range ({store.n_episodes} episodes)"
                )
        if not self.episodes:
            raise DatasetError(f"{store.path}: no episodes selected")
        starts = np.concatenate([[0], all_ends[:-1]])
        # source rows of the selected episodes in the store
        self._src_start = starts[self.episodes].astype(np.int64)
        self._lengths = (all_ends[self.episodes] - self._src_start).astype(np.int64)
        # sample i -> (position in self.episodes, t)
        self._cum = np.cumsum(self._lengths)
        keys = [ACTION_KEY, *self.obs_keys]
        total_bytes = sum(
            int(self._lengths.sum())
            * int(np.prod(store.key_shape(k), dtype=np.int64))
            * store.key_dtype(k).itemsize
            for k in keys
        )
        self.in_memory = total_bytes <= memory_limit_bytes if in_memory is None else in_memory
        memory_keys = keys if self.in_memory else [k for k in keys if k not in self.rgb_keys]
        # Keys held in memory: selected episodes concatenated; row offsets per episode.
        self._mem_start = np.concatenate([[0], self._cum[:-1]]).astype(np.int64)
        self._mem: dict[str, np.ndarray] = {}
        rows = np.concatenate(
            [np.arange(s, s + n) for s, n in zip(self._src_start, self._lengths, strict=True)]
        )
        for k in memory_keys:
            self._mem[k] = _gather_rows(store, k, rows)
        self._lazy_keys = [k for k in keys if k not in self._mem]
        self._store: EpisodeStore | None = store if self._lazy_keys else None
        self._store_pid = os.getpid()

    def __len__(self) -> int:
        return int(self._cum[-1])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers re-open the zarr store themselves (see _lazy_store).
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def _lazy_store(self) -> EpisodeStore:
        if self._store is None or self._store_pid != os.getpid():
            self._store = EpisodeStore.open(
                self.path, "r", storage_options=self._storage_options, check_values=False
            )
            self._store_pid = os.getpid()
        return self._store

    def _position(self, index: int) -> tuple[int, int]:
        """Sample index -> (position in ``self.episodes``, step t within that episode)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} windows")
        index %= n
        pos = int(np.searchsorted(self._cum, index, side="right"))
        return pos, index - (int(self._cum[pos - 1]) if pos > 0 else 0)

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index -> (store episode index, step t within that episode)."""
        pos, t = self._position(index)
        return self.episodes[pos], t

    def _rows(self, key: str, pos: int, idx: np.ndarray) -> np.ndarray:
        if key in self._mem:
            return self._mem[key][self._mem_start[pos] + idx]
        # idx is sorted with repeats at the edges: read the contiguous range once, then gather
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        src = int(self._src_start[pos])
        block = self._lazy_store().read(key, src + lo, src + hi)  # corrupt chunk: DatasetError
        return block[idx - lo]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pos, t = self._position(index)
        length = int(self._lengths[pos])
        obs_idx, obs_pad, act_idx, act_pad = window_indices(
            t, length, self.n_obs_steps, self.horizon
        )
        obs = {}
        for key in self.obs_keys:
            rows = self._rows(key, pos, obs_idx)
            if key not in self.rgb_keys and rows.dtype != np.float32:
                rows = rows.astype(np.float32)
            obs[key] = torch.from_numpy(np.ascontiguousarray(rows))
        action = self._rows(ACTION_KEY, pos, act_idx).astype(np.float32, copy=False)
        return {
            "obs": obs,
            "action": torch.from_numpy(np.ascontiguousarray(action)),
            "obs_pad": torch.from_numpy(obs_pad),
            "action_pad": torch.from_numpy(act_pad),
        }
