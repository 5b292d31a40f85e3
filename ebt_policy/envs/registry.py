"""Task registry: one :class:`TaskSpec` per simulated task.

A spec says how to build the task's gymnasium env, which observation keys a policy uses by default,
the action space and its units, the control rate and horizon, and which scripted expert solves it.
``spec.dataset_metadata()`` is what the episode store records so that evaluation can rebuild the
same env with :func:`make_env_from_metadata`.

Simulator packages (robosuite, gym-pusht) are imported only when a task's env is built, so listing
tasks or reading a spec is cheap.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ebt_policy.errors import TaskError

__all__ = [
    "Expert",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "make_env",
    "make_env_from_metadata",
    "register_task",
]


class Expert(Protocol):
    """A scripted expert: closed-loop on the observation dict the env returns."""

    def reset(self) -> None:
        """Start a new episode (draws this episode's randomised behaviour)."""

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Action for the current observation, float32 of shape (action_dim,)."""


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
    horizon: int
    success: str  # the success check, in words
    default_env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.action_dim
        if not (len(self.action_low) == len(self.action_high) == len(self.action_names) == n):
            raise TaskError(f"task {self.name!r}: action low/high/names must all have length {n}")
        if self.action_kind not in ("delta", "absolute"):
            raise TaskError(f"task {self.name!r}: action_kind must be 'delta' or 'absolute'")
        if self.horizon <= 0 or self.control_hz <= 0:
            raise TaskError(f"task {self.name!r}: horizon and control_hz must be positive")
        for key in self.rgb_keys:
            if not key.endswith("_image"):
                raise TaskError(f"task {self.name!r}: camera key {key!r} must end in '_image'")

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """All low-dim keys the env returns: the policy's defaults plus privileged ones."""
        extra = tuple(k for k in self.privileged_keys if k not in self.low_dim_keys)
        return self.low_dim_keys + extra

    def make_env(self, images: bool = False, render_size: int = 84, **env_kwargs: Any):
        """Build this task's gymnasium env (see :func:`make_env`)."""
        kwargs = {**self.default_env_kwargs, **env_kwargs}
        return _load(self.env_factory)(images=images, render_size=render_size, **kwargs)

    def make_expert(self, seed: int) -> Expert:
        """A scripted expert whose random choices (noise, approach offsets) come from ``seed``."""
        return _load(self.expert_factory)(seed)

    def dataset_metadata(
        self, images: bool = False, render_size: int = 84, **env_kwargs: Any
    ) -> dict[str, Any]:
        """Root metadata for an episode store of this task (JSON-serialisable).

        ``task.env_kwargs`` holds everything :func:`make_env_from_metadata` needs to rebuild the
        env: ``images``, ``render_size`` and any extra env kwargs.
        """
        kwargs = {**self.default_env_kwargs, **env_kwargs}
        return {
            "task": {
                "name": self.name,
                "env_kwargs": {"images": bool(images), "render_size": int(render_size), **kwargs},
            },
            "control_hz": float(self.control_hz),
            "horizon": int(self.horizon),
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


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (a name can be registered once)."""
    if spec.name in _TASKS:
        raise TaskError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def _load(target: str) -> Callable[..., Any]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; TaskError naming the known tasks if there is none."""
    try:
        return _TASKS[name]
    except KeyError:
        known = ", ".join(sorted(_TASKS))
        raise TaskError(f"unknown task {name!r}; known tasks: {known}") from None


def make_env(task: str, images: bool = False, render_size: int = 84, **env_kwargs: Any):
    """Build task ``task``'s gymnasium env.

    Observations are a dict: low-dim keys float32 (``spec.obs_keys``) and, with ``images=True``,
    camera keys (``spec.rgb_keys``) uint8 (render_size, render_size, 3), upright.
    ``info["success"]`` is the task's success check; episodes truncate at ``spec.horizon`` and
    terminate on success unless ``terminate_on_success=False``.
    """
    return get_task(task).make_env(images=images, render_size=render_size, **env_kwargs)


def make_env_from_metadata(metadata: Mapping[str, Any], **overrides: Any):
    """Rebuild the env an episode store was recorded in (``store.metadata``).

    ``overrides`` replace entries of ``metadata["task"]["env_kwargs"]`` (for example
    ``images=True`` to render cameras for a low-dim dataset's videos).
    """
    task = metadata.get("task") if isinstance(metadata, Mapping) else None
    if not isinstance(task, Mapping) or not isinstance(task.get("name"), str):
        raise TaskError(
            "dataset metadata has no valid 'task' entry: expected "
            "{'name': str, 'env_kwargs': dict}, got " + repr(task)
        )
    env_kwargs = task.get("env_kwargs", {})
    if not isinstance(env_kwargs, Mapping):
        raise TaskError(f"dataset metadata task.env_kwargs must be a dict, got {env_kwargs!r}")
    kwargs = {**env_kwargs, **overrides}
    spec = get_task(task["name"])
    accepted = inspect.signature(_load(spec.env_factory)).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TaskError(
            f"dataset metadata task.env_kwargs for {spec.name!r} has unknown keys {unknown}; "
            f"expected some of {sorted(accepted)}"
        )
    return spec.make_env(**kwargs)


# --- built-in tasks ------------------------------------------------------------------------------

_ROBOSUITE_UNITS = (
    "OSC delta pose: dx, dy, dz (1.0 = 5 cm), axis-angle rotation delta (1.0 = 0.5 rad), "
    "gripper (-1 open, +1 close)"
)
_ROBOSUITE_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
_ROBOSUITE_LOW_DIM = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
_ROBOSUITE_RGB = ("agentview_image", "robot0_eye_in_hand_image")


def _robosuite_spec(
    name: str, env_name: str, privileged: tuple[str, ...], horizon: int, success: str, doc: str
) -> TaskSpec:
    return TaskSpec(
        name=name,
        description=f"robosuite {env_name}, Panda, {doc}",
        env_factory=f"ebt_policy.envs.robosuite_tasks:make_{name}_env",
        expert_factory=f"ebt_policy.envs.experts:make_{name}_expert",
        low_dim_keys=_ROBOSUITE_LOW_DIM,
        rgb_keys=_ROBOSUITE_RGB,
        privileged_keys=("robot0_joint_pos", *privileged),
        action_dim=7,
        action_low=(-1.0,) * 7,
        action_high=(1.0,) * 7,
        action_names=_ROBOSUITE_NAMES,
        action_kind="delta",
        action_units=_ROBOSUITE_UNITS,
        control_hz=20.0,
        horizon=horizon,
        success=success,
    )


# Horizons: 400 steps (20 s) for the robosuite tasks, as robomimic's and Diffusion Policy's
# evaluations of Lift/Can/Square use. Our experts finish in ~50 (lift) to ~170 (square) steps, so a
# policy has >2x the expert's time, while failed rollouts stay cheap to evaluate.
for _spec in (
    _robosuite_spec(
        "lift",
        "Lift",
        ("cube_pos", "cube_quat"),
        400,
        "cube lifted more than 4 cm above the table",
        "lift the cube",
    ),
    _robosuite_spec(
        "can",
        "PickPlaceCan",
        ("Can_pos", "Can_quat", "target_pos"),
        400,
        "can inside its target bin quarter and the gripper away from it",
        "move the can into its bin",
    ),
    _robosuite_spec(
        "square",
        "NutAssemblySquare",
        ("SquareNut_pos", "SquareNut_quat", "peg_pos"),
        400,
        "square nut around the square peg, resting low",
        "put the square nut on its peg",
    ),
    _robosuite_spec(
        "stack",
        "Stack",
        ("cubeA_pos", "cubeA_quat", "cubeB_pos", "cubeB_quat"),
        400,
        "cube A resting on cube B and not grasped",
        "stack cube A on cube B",
    ),
    TaskSpec(
        name="pusht",
        description="gym-pusht: push the T block onto the target pose with a circular agent",
        env_factory="ebt_policy.envs.pusht:make_pusht_env",
        expert_factory="ebt_policy.envs.experts:make_pusht_expert",
        low_dim_keys=("agent_pos", "block_keypoints"),
        rgb_keys=("overhead_image",),
        privileged_keys=("block_pose",),
        action_dim=2,
        action_low=(0.0, 0.0),
        action_high=(512.0, 512.0),
        action_names=("x", "y"),
        action_kind="absolute",
        action_units="target position of the agent in pixels of the 512x512 workspace",
        control_hz=10.0,
        horizon=300,
        success="target-area coverage >= 0.95 (score: max coverage over the episode)",
    ),
    TaskSpec(
        name="twogoal",
        description=(
            "point mass reaching either of two symmetric goals around an obstacle; demonstrations "
            "pick a side at random (multimodal)"
        ),
        env_factory="ebt_policy.envs.twogoal:make_twogoal_env",
        expert_factory="ebt_policy.envs.experts:make_twogoal_expert",
        low_dim_keys=("agent_pos", "agent_vel"),
        rgb_keys=("overhead_image",),
        privileged_keys=(),
        action_dim=2,
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        action_names=("vx", "vy"),
        action_kind="delta",
        action_units="commanded velocity, 1.0 = 0.3 m/s (1.5 cm per 50 ms step)",
        control_hz=20.0,
        horizon=120,  # the expert needs 45-90 steps
        success="agent centre within 3 cm of either goal",
    ),
):
    register_task(_spec)
