"""What a task is: :class:`TaskSpec` (declared once per task, in ``envs/tasks/<family>/spec.py``)
and the :class:`Expert` protocol its scripted expert follows.

This module imports no simulator: reading or listing specs stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ebt_policy.errors import TaskError

__all__ = ["Expert", "TaskSpec", "load_factory"]


class Expert(Protocol):
    """A scripted expert: closed-loop on the observation dict the env returns."""

    def reset(self) -> None:
        """Start a new episode (draws this episode's randomised behaviour)."""

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Action for the current observation, float32 of shape (action_dim,)."""


def load_factory(target: str) -> Callable[..., Any]:
    """The function named by a ``"module:function"`` string (imported on call)."""
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the rest of the stack needs to know about one task.

    ``env_factory`` and ``expert_factory`` are "module:function" strings, imported lazily, so that
    the registry never imports a simulator nobody asked for.
    """

    name: str
    description: str
    env_factory: str  # "module:function"; called as f(images=..., render_size=..., **env_kwargs)
    expert_factory: str  # "module:function"; called as f(seed) -> Expert
    low_dim_keys: tuple[str, ...]  # keys a policy uses by default
    rgb_keys: tuple[str, ...]  # camera keys present when images=True (uint8 HWC)
    privileged_keys: tuple[str, ...]  # extra low-dim keys the env always returns (experts use them)
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    action_names: tuple[str, ...]
    action_kind: Literal["delta", "absolute"]
    action_units: str
    control_hz: float
    max_episode_steps: int  # the env truncates episodes here (a TimeLimit)
    success: str  # the success check, in words
    default_env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.action_dim
        if not (len(self.action_low) == len(self.action_high) == len(self.action_names) == n):
            raise TaskError(f"task {self.name!r}: action low/high/names must all have length {n}")
        if self.action_kind not in ("delta", "absolute"):
            raise TaskError(f"task {self.name!r}: action_kind must be 'delta' or 'absolute'")
        if self.max_episode_steps <= 0 or self.control_hz <= 0:
            raise TaskError(
                f"task {self.name!r}: max_episode_steps and control_hz must be positive"
            )
        for key in self.rgb_keys:
            if not key.endswith("_image"):
                raise TaskError(f"task {self.name!r}: camera key {key!r} must end in '_image'")

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """All low-dim keys the env returns: the policy's defaults plus privileged ones."""
        extra = tuple(k for k in self.privileged_keys if k not in self.low_dim_keys)
        return self.low_dim_keys + extra

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` float32 arrays of shape (action_dim,) (for the env's action space)."""
        low = np.asarray(self.action_low, dtype=np.float32)
        return low, np.asarray(self.action_high, dtype=np.float32)

    def make_env(self, images: bool = False, render_size: int = 84, **env_kwargs: Any):
        """Build this task's gymnasium env (see :func:`ebt_policy.envs.make_env`)."""
        kwargs = {**self.default_env_kwargs, **env_kwargs}
        return load_factory(self.env_factory)(images=images, render_size=render_size, **kwargs)

    def make_expert(self, seed: int) -> Expert:
        """A scripted expert whose random choices (noise, approach offsets) come from ``seed``."""
        return load_factory(self.expert_factory)(seed)

    def dataset_metadata(
        self, images: bool = False, render_size: int = 84, **env_kwargs: Any
    ) -> dict[str, Any]:
        """Root metadata for an episode store of this task (JSON-serialisable).

        ``task.env_kwargs`` holds everything :func:`ebt_policy.envs.make_env_from_metadata` needs
        to rebuild the env: ``images``, ``render_size`` and any extra env kwargs.
        """
        kwargs = {**self.default_env_kwargs, **env_kwargs}
        return {
            "task": {
                "name": self.name,
                "env_kwargs": {"images": bool(images), "render_size": int(render_size), **kwargs},
            },
            "control_hz": float(self.control_hz),
            # the episode cap, under the key stores have always used (readers and old stores)
            "horizon": int(self.max_episode_steps),
            "action_space": {
                "kind": self.action_kind,
                "low": [float(x) for x in self.action_low],
                "high": [float(x) for x in self.action_high],
                "names": list(self.action_names),
                "units": self.action_units,
            },
            "obs_keys": {
                "low_dim": list(self.low_dim_keys),
                "rgb": list(self.rgb_keys) if images else [],
            },
        }
