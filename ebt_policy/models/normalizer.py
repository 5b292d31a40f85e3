"""Normaliser module: dataset statistics as buffers, so they travel inside checkpoints.

It lives with the models (not with the episode store) so that loading and running a policy never
imports ``ebt_policy.datasets``; ``from ebt_policy.datasets import Normalizer`` still works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ebt_policy.errors import ConfigError
from ebt_policy.models.shapes import ShapeMeta, is_rgb_key

DEFAULT_EPS = 1e-4
# The statistics compute_stats writes per key (ebt_policy.datasets.stats uses the same names).
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


class _KeyStats(nn.Module):
    """Buffers min/max/mean/std/q01/q99 of one key, each of the key's per-step shape."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        for name in STAT_NAMES:
            self.register_buffer(name, torch.zeros(tuple(shape), dtype=torch.float32))


class Normalizer(nn.Module):
    """Maps actions and low-dim observations to [-1, 1] (min-max per dimension) and uint8 images
    to [-1, 1] floats; :meth:`unnormalize` inverts both.

    Per dimension: ``y = (x - (max + min) / 2) * 2 / (max - min)``. A dimension whose range
    ``max - min`` is below ``eps`` (constant in the data, e.g. an unused gripper) is only centred,
    ``y = x - (max + min) / 2``: it maps to 0 on the data and nothing is divided by ~0.

    Build with :meth:`from_stats` (statistics from :func:`compute_stats`), or with the constructor
    from ``key -> per-step shape`` (buffers zeroed, e.g. to load a checkpoint's ``state_dict``
    into). Using a normaliser whose statistics were never set raises.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        rgb_keys: Iterable[str] | None = None,
        eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ConfigError(f"eps must be > 0, got {eps}")
        rgb = set(k for k in shapes if is_rgb_key(k)) if rgb_keys is None else set(rgb_keys)
        for key in shapes:
            if "." in key or not key:
                raise ConfigError(f"normaliser key {key!r}: keys must be non-empty without '.'")
        self.eps = eps
        self.rgb_keys = sorted(k for k in shapes if k in rgb)
        self.shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
        self.stats = nn.ModuleDict(
            {k: _KeyStats(s) for k, s in self.shapes.items() if k not in rgb}
        )
        # set by from_stats / load_state_dict; guards against silently using zeroed statistics
        self.register_buffer("has_stats", torch.tensor(False))

    @classmethod
    def from_stats(
        cls,
        stats: Mapping[str, Mapping[str, Any]],
        keys: Iterable[str],
        rgb_keys: Iterable[str] | None = None,
        eps: float = DEFAULT_EPS,
    ) -> Normalizer:
        """Normaliser for ``keys``; image keys (``rgb_keys``, default: names ending ``_image``)
        need no statistics, every other key must be in ``stats``."""
        keys = list(keys)
        rgb = set(k for k in keys if is_rgb_key(k)) if rgb_keys is None else set(rgb_keys)
        shapes: dict[str, tuple[int, ...]] = {}
        for key in keys:
            if key in rgb:
                shapes[key] = ()
                continue
            if key not in stats:
                raise ConfigError(f"no statistics for key {key!r} (have {sorted(stats)})")
            shapes[key] = tuple(np.shape(stats[key]["min"]))
        norm = cls(shapes, rgb_keys=rgb, eps=eps)
        for key, module in norm.stats.items():
            for name in STAT_NAMES:
                if name not in stats[key]:
                    raise ConfigError(f"statistics of key {key!r} lack {name!r}")
                value = torch.as_tensor(np.asarray(stats[key][name]), dtype=torch.float32)
                if tuple(value.shape) != shapes[key]:
                    raise ConfigError(
                        f"statistics of key {key!r}: {name} has shape {tuple(value.shape)}, "
                        f"min has {shapes[key]}"
                    )
                getattr(module, name).copy_(value)
        norm.has_stats.fill_(True)
        return norm

    @classmethod
    def from_shape_meta(
        cls, shape_meta: ShapeMeta | Mapping[str, Any], eps: float = DEFAULT_EPS
    ) -> Normalizer:
        """Empty normaliser (for loading a state_dict) from a :class:`ShapeMeta` or the dict
        ``store.shape_meta(...)`` returns."""
        meta = ShapeMeta.coerce(shape_meta)
        shapes: dict[str, Sequence[int]] = {"action": (meta.action_dim,)}
        rgb = []
        for key, feature in meta.obs.items():
            shapes[key] = feature.shape
            if feature.type == "rgb":
                rgb.append(key)
        return cls(shapes, rgb_keys=rgb, eps=eps)

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    def _affine(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.has_stats):
            raise ConfigError(
                "normaliser has no statistics: build it with Normalizer.from_stats or load a "
                "state_dict that has them"
            )
        if key not in self.stats:
            raise ConfigError(f"normaliser has no key {key!r} (keys: {self.keys})")
        shape = self.shapes[key]
        if shape and tuple(x.shape[-len(shape) :]) != shape:
            raise ConfigError(
                f"normaliser key {key!r}: input trailing shape {tuple(x.shape)} does not end "
                f"with {shape}"
            )
        s = self.stats[key]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        lo, hi = s.min.to(dtype), s.max.to(dtype)
        span = hi - lo
        center = (hi + lo) / 2
        scale = torch.where(span < self.eps, torch.ones_like(span), 2 / span.clamp_min(self.eps))
        return center, scale

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Robot units -> normalised. Images: uint8 [0, 255] -> float [-1, 1]."""
        if key in self.rgb_keys:
            return x.to(torch.float32) / 127.5 - 1.0
        center, scale = self._affine(key, x)
        x = x if x.is_floating_point() else x.to(torch.float32)
        return (x - center) * scale

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Normalised -> robot units. Images: float [-1, 1] -> uint8."""
        if key in self.rgb_keys:
            return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        center, scale = self._affine(key, x)
        return x / scale + center

    def normalize_dict(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every entry of ``data`` (each key must be known)."""
        return {k: self.normalize(k, v) for k, v in data.items()}

    def extra_repr(self) -> str:
        return f"keys={self.keys}, rgb_keys={self.rgb_keys}, eps={self.eps}"
