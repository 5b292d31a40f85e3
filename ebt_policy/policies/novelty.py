"""Observation novelty: how unlike every training observation the policy's input window is.

A :class:`NoveltyIndex` holds a bank of training observation windows (each low-dimensional key's
window (To, ...) divided by that key's range over the store, flattened and concatenated in key
order; images are left out) and the quantiles of the distance from held-out demonstration
windows to their nearest bank window. A window's ``novelty`` (``ChunkPrediction.novelty``) is the
calibrated quantile of its own nearest-bank distance: 0.5 = as far from training as a typical
held-out demonstration window, 1 = farther than all of them.

Why it exists beside the energy: a conditional energy E(obs, chunk) is trained to rank chunks for
an observation, never to compare observations, and measured on Lift and PushT it does not flag
perturbed observations (README, "Why this energy"); this distance does, wherever the perturbation
is visible in the observation at all. It looks only at the observation, so it applies whatever
the planner does (warm start, best-of-K, another step count).

Stored as ``novelty.safetensors`` beside ``config.json`` (``ebt-policy calibrate --novelty``),
a sidecar like ``calibration.json``: written or deleted without touching the weights. It depends
on the data the policy was trained on, not on the weights. This module imports no episode store;
building an index from one lives in :mod:`ebt_policy.policies.calibrate_cli`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import CheckpointError, ConfigError

NOVELTY_NAME = "novelty.safetensors"
NOVELTY_VERSION = 1
LEVELS = tuple(i / 100 for i in range(101))  # the stored quantile levels, 0..100 percent


def window_features(
    obs: Mapping[str, Any],
    keys: Sequence[str],
    span: Mapping[str, Any],
    delta_span: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """(B, F) float32: each of ``keys``' windows (B, To, ...) divided by the key's range
    ``span[key]`` (broadcast over its last dimensions), flattened; with ``delta_span`` also the
    To - 1 changes between consecutive frames divided by ``delta_span[key]`` (the range of one
    step's change); key by key, concatenated in order."""
    parts = []
    for key in keys:
        value = obs[key]
        if hasattr(value, "detach"):  # a torch tensor, perhaps on a GPU
            value = value.detach().cpu().numpy()
        value = np.asarray(value, np.float32)
        parts.append((value / np.asarray(span[key], np.float32)).reshape(len(value), -1))
        if delta_span is not None:
            step = (value[:, 1:] - value[:, :-1]) / np.asarray(delta_span[key], np.float32)
            parts.append(step.reshape(len(value), -1))
    return np.concatenate(parts, axis=1)


def delta_range(windows: Mapping[str, np.ndarray], span: Mapping[str, Any]) -> dict:
    """key -> the 1st-to-99th percentile range of one frame-to-frame change in ``windows``
    (key -> (N, To >= 2, ...)), per component, at least 1e-3 of the key's ``span``."""
    out = {}
    for key, value in windows.items():
        value = np.asarray(value, np.float64)
        step = (value[:, 1:] - value[:, :-1]).reshape(-1, *value.shape[2:])
        lo, hi = np.quantile(step, [0.01, 0.99], axis=0)
        floor = np.maximum(1e-3 * np.asarray(span[key], np.float64), 1e-6)
        out[key] = np.maximum(hi - lo, floor).astype(np.float32)
    return out


def nearest_distance(queries: np.ndarray, bank: np.ndarray, block: int = 4096) -> np.ndarray:
    """(B,) Euclidean distance from each row of ``queries`` (B, F) to its nearest row of
    ``bank`` (N, F), in float32, the bank taken ``block`` rows at a time (bounded memory)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    ref = torch.from_numpy(np.ascontiguousarray(bank, np.float32))
    best = torch.full((len(q),), float("inf"))
    with torch.no_grad():
        for start in range(0, len(ref), block):
            d = torch.cdist(q, ref[start : start + block]).min(dim=1).values
            best = torch.minimum(best, d)
    return best.numpy()


@dataclass
class NoveltyIndex:
    """Training windows to measure distances to, and the held-out distances' quantiles.

    Attributes:
        keys: the low-dimensional observation keys, in feature order.
        span: key -> its range over the store (max - min, at least 1e-6), shape of one frame.
        n_obs_steps: frames per window (To) the bank was built with.
        delta_span: key -> the range of one frame-to-frame change, or None: with it the
            features also hold the changes between consecutive frames in those units (motion
            that the frames' ranges would hide: frozen frames, jitter).
        bank: (N, F) float32 training-window features.
        quantiles: the held-out windows' nearest-bank distances at :data:`LEVELS`.
        info: where the bank and the quantiles came from, for people.
    """

    keys: tuple[str, ...]
    span: dict[str, np.ndarray]
    n_obs_steps: int
    bank: np.ndarray
    quantiles: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    delta_span: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        if not self.keys:
            raise ConfigError("novelty index: needs at least one low-dimensional observation key")
        missing = [k for k in self.keys if k not in self.span]
        if missing:
            raise ConfigError(f"novelty index span: missing key(s) {missing}")
        self.span = {k: np.asarray(self.span[k], np.float32) for k in self.keys}
        if self.delta_span is not None:
            missing = [k for k in self.keys if k not in self.delta_span]
            if missing:
                raise ConfigError(f"novelty index delta_span: missing key(s) {missing}")
            if self.n_obs_steps < 2:
                raise ConfigError("novelty index: frame changes need windows of >= 2 frames")
            self.delta_span = {k: np.asarray(self.delta_span[k], np.float32) for k in self.keys}
        self.bank = np.ascontiguousarray(self.bank, np.float32)
        if self.bank.ndim != 2 or len(self.bank) == 0:
            raise ConfigError(f"novelty index bank: expected (N >= 1, F), got {self.bank.shape}")
        frames = 2 * self.n_obs_steps - 1 if self.delta_span is not None else self.n_obs_steps
        width = sum(frames * int(np.prod(self.span[k].shape or (1,))) for k in self.keys)
        if self.bank.shape[1] != width:
            raise ConfigError(
                f"novelty index bank: {self.bank.shape[1]} features, expected {width} "
                f"(keys {list(self.keys)} x {self.n_obs_steps} frames"
                + (" and their changes)" if self.delta_span is not None else ")")
            )
        q = np.asarray(self.quantiles, np.float64)
        if q.shape != (len(LEVELS),) or not np.isfinite(q).all() or (np.diff(q) < 0).any():
            raise ConfigError(
                f"novelty index quantiles: expected {len(LEVELS)} finite non-decreasing numbers"
            )
        self.quantiles = [float(x) for x in q]

    def features(self, obs_window: Mapping[str, Any]) -> np.ndarray:
        """(B, F) features of an observation window (key -> (B, To, ...), env units)."""
        missing = [k for k in self.keys if k not in obs_window]
        if missing:
            raise ConfigError(f"observation window: missing key(s) {missing} (novelty index)")
        return window_features(obs_window, self.keys, self.span, self.delta_span)

    def distance(self, obs_window: Mapping[str, Any]) -> np.ndarray:
        """(B,) distance from each window to its nearest training window."""
        return nearest_distance(self.features(obs_window), self.bank)

    def score_of(self, distance: np.ndarray) -> np.ndarray:
        """(B,) float32 in [0, 1]: the calibrated quantile of nearest-bank distances."""
        q = np.asarray(self.quantiles, np.float64)
        return np.interp(np.asarray(distance, np.float64), q, LEVELS).astype(np.float32)

    def score(self, obs_window: Mapping[str, Any]) -> np.ndarray:
        """(B,) novelty in [0, 1] of an observation window (higher = less like training)."""
        return self.score_of(self.distance(obs_window))

    @classmethod
    def build(
        cls,
        keys: Sequence[str],
        span: Mapping[str, Any],
        n_obs_steps: int,
        bank: np.ndarray,
        held_out: np.ndarray,
        info: dict[str, Any] | None = None,
        delta_span: Mapping[str, Any] | None = None,
    ) -> NoveltyIndex:
        """The index of training features ``bank`` (N, F), calibrated on held-out features
        ``held_out`` (M >= 1, F)."""
        if len(held_out) == 0:
            raise ConfigError("novelty index: needs at least one held-out window to calibrate")
        distances = nearest_distance(held_out, bank)
        return cls(
            keys=tuple(keys),
            span={k: np.asarray(span[k], np.float32) for k in keys},
            n_obs_steps=int(n_obs_steps),
            bank=bank,
            quantiles=[float(x) for x in np.quantile(distances.astype(np.float64), LEVELS)],
            info=dict(info or {}),
            delta_span=None if delta_span is None else {k: delta_span[k] for k in keys},
        )


def write_novelty(index: NoveltyIndex, directory: str | os.PathLike) -> Path:
    """Write ``novelty.safetensors`` into a checkpoint directory, atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(directory) / NOVELTY_NAME
    tensors = {"bank": torch.from_numpy(index.bank)}
    for i, key in enumerate(index.keys):
        tensors[f"span.{i}"] = torch.from_numpy(np.ascontiguousarray(index.span[key]))
        if index.delta_span is not None:
            delta = np.ascontiguousarray(index.delta_span[key])
            tensors[f"delta_span.{i}"] = torch.from_numpy(delta)
    metadata = {
        "version": str(NOVELTY_VERSION),
        "keys": json.dumps(list(index.keys)),
        "n_obs_steps": str(index.n_obs_steps),
        "quantiles": json.dumps(index.quantiles),
        "info": json.dumps(index.info),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_novelty(
    directory: str | os.PathLike,
    keys: Sequence[str] | None = None,
    n_obs_steps: int | None = None,
) -> NoveltyIndex | None:
    """The novelty index stored in checkpoint ``directory``, None when it has none.

    Raises:
        CheckpointError: one line naming ``novelty.safetensors`` when it is unreadable,
            malformed, of a newer version, or built for other observation keys or another
            window length than the policy's (``keys``, ``n_obs_steps``; None skips the check).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / NOVELTY_NAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            tensors = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt?): {exc}") from None
    try:
        version = int(meta.get("version", "0"))
        if version != NOVELTY_VERSION:
            raise CheckpointError(
                f"{path}: metadata 'version': expected {NOVELTY_VERSION}, got {version}"
            )
        stored_keys = json.loads(meta["keys"])
        index = NoveltyIndex(
            keys=tuple(stored_keys),
            span={k: tensors[f"span.{i}"] for i, k in enumerate(stored_keys)},
            n_obs_steps=int(meta["n_obs_steps"]),
            bank=tensors["bank"],
            quantiles=json.loads(meta["quantiles"]),
            info=json.loads(meta.get("info", "{}")),
            delta_span=(
                {k: tensors[f"delta_span.{i}"] for i, k in enumerate(stored_keys)}
                if "delta_span.0" in names
                else None
            ),
        )
    except CheckpointError:
        raise
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing {exc.args[0]!r}") from None
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if keys is not None and tuple(keys) != index.keys:
        raise CheckpointError(
            f"{path}: built for observation keys {list(index.keys)}, the policy reads "
            f"{list(keys)} (run `ebt-policy calibrate --novelty` again, or delete it)"
        )
    if n_obs_steps is not None and int(n_obs_steps) != index.n_obs_steps:
        raise CheckpointError(
            f"{path}: built for {index.n_obs_steps}-frame windows, the policy reads "
            f"{n_obs_steps} (run `ebt-policy calibrate --novelty` again, or delete it)"
        )
    return index
