"""The shapes a policy is built for: each observation key's per-step shape and kind, action size.

:class:`ShapeMeta` replaces the nested ``shape_meta`` dict of the episode store
(``{"obs": {key: {"shape": [...], "type": "low_dim" | "rgb"}}, "action": {"shape": [Da]}}``);
:meth:`ShapeMeta.coerce` accepts either, and :meth:`ShapeMeta.to_dict` gives the dict back (that is
what checkpoints store). It lives here, beside the networks, so that running a policy never imports
the episode store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ebt_policy.errors import ConfigError

FEATURE_TYPES = ("low_dim", "rgb")
RGB_SUFFIX = "_image"


def is_rgb_key(key: str) -> bool:
    """Naming convention of the data: keys ending in ``_image`` hold uint8 HWC images."""
    return key.endswith(RGB_SUFFIX)


@dataclass(frozen=True)
class ObsFeature:
    """One observation key: its per-step shape (images as stored, HWC) and its kind."""

    shape: tuple[int, ...]
    type: str = "low_dim"  # "low_dim" | "rgb"


@dataclass(frozen=True)
class ShapeMeta:
    """Observation features by key (in the order the policy reads them) and the action size Da."""

    obs: Mapping[str, ObsFeature]
    action_dim: int

    def __post_init__(self) -> None:
        if self.action_dim < 1:
            raise ConfigError(f"shape_meta: action shape must be [Da], got [{self.action_dim}]")
        if not self.obs:
            raise ConfigError(
                "shape_meta: 'obs' is empty; the policy needs at least one observation key"
            )
        for key, feature in self.obs.items():
            if feature.type not in FEATURE_TYPES:
                raise ConfigError(
                    f"shape_meta: key {key!r} has type {feature.type!r}; "
                    "expected 'low_dim' or 'rgb'"
                )
            if feature.type == "rgb" and len(feature.shape) != 3:
                raise ConfigError(
                    f"shape_meta: rgb key {key!r} needs a 3-d shape, got {list(feature.shape)}"
                )

    @classmethod
    def from_dict(cls, shape_meta: Mapping[str, Any]) -> ShapeMeta:
        """From the nested dict (``EpisodeStore.shape_meta`` or a checkpoint's config.json)."""
        try:
            obs_meta = shape_meta["obs"]
            action_shape = list(shape_meta["action"]["shape"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"shape_meta must hold 'obs' and 'action': {{'shape': [Da]}}; missing {exc}"
            ) from None
        if len(action_shape) != 1:
            raise ConfigError(f"shape_meta: action shape must be [Da], got {action_shape}")
        obs = {
            key: ObsFeature(
                shape=tuple(int(s) for s in meta.get("shape", ())),
                type=meta.get("type", "low_dim"),
            )
            for key, meta in (obs_meta or {}).items()
        }
        return cls(obs=obs, action_dim=int(action_shape[0]))

    @classmethod
    def coerce(cls, shape_meta: ShapeMeta | Mapping[str, Any]) -> ShapeMeta:
        """``shape_meta`` itself if it is a ShapeMeta, else :meth:`from_dict` of it."""
        return shape_meta if isinstance(shape_meta, ShapeMeta) else cls.from_dict(shape_meta)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict form (JSON-ready), as ``EpisodeStore.shape_meta`` writes it."""
        obs = {k: {"shape": list(f.shape), "type": f.type} for k, f in self.obs.items()}
        return {"obs": obs, "action": {"shape": [self.action_dim]}}

    @property
    def low_dim(self) -> dict[str, tuple[int, ...]]:
        """Low-dim key -> per-step shape."""
        return {k: f.shape for k, f in self.obs.items() if f.type == "low_dim"}

    @property
    def rgb(self) -> dict[str, tuple[int, int, int]]:
        """Camera key -> (C, H, W)."""
        return {k: _chw(f.shape) for k, f in self.obs.items() if f.type == "rgb"}


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Images are stored HWC (CONTRACTS A); accept CHW too when unambiguous."""
    if shape[-1] in (1, 3):
        return (shape[2], shape[0], shape[1])
    return (shape[0], shape[1], shape[2])
