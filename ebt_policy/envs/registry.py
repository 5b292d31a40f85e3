"""Task registry: one :class:`~ebt_policy.envs.spec.TaskSpec` per simulated task.

The built-in tasks declare their specs in ``envs/tasks/<family>/spec.py``; this module registers
them and builds envs by task name. ``spec.dataset_metadata()`` is what the episode store records so
that evaluation can rebuild the same env with :func:`make_env_from_metadata`.

Simulator packages (robosuite, gym-pusht, mujoco) are imported only when a task's env is built, so
listing tasks or reading a spec is cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ebt_policy.envs.spec import Expert, TaskSpec, load_factory
from ebt_policy.envs.tasks import BUILTIN_SPECS
from ebt_policy.errors import TaskError

# the public names are listed once, in ebt_policy/envs/__init__.py

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (a name can be registered once)."""
    if spec.name in _TASKS:
        raise TaskError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


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
    ``info["success"]`` is the task's success check; episodes truncate at
    ``spec.max_episode_steps`` and terminate on success unless ``terminate_on_success=False``.
    """
    return get_task(task).make_env(images=images, render_size=render_size, **env_kwargs)


def make_expert(task: str, seed: int) -> Expert:
    """Task ``task``'s scripted expert, its random choices drawn from ``seed``."""
    return get_task(task).make_expert(seed)


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
    if "horizon" in kwargs:  # the env factories' episode cap was called `horizon` before
        kwargs.setdefault("max_episode_steps", kwargs.pop("horizon"))
    spec = get_task(task["name"])
    accepted = inspect.signature(load_factory(spec.env_factory)).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TaskError(
            f"dataset metadata task.env_kwargs for {spec.name!r} has unknown keys {unknown}; "
            f"expected some of {sorted(accepted)}"
        )
    return spec.make_env(**kwargs)


for _spec in BUILTIN_SPECS:
    register_task(_spec)
