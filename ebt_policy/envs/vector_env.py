"""The evaluation runner's vector env: one env per worker slot, autoreset off.

Autoreset: the vector env runs with ``autoreset_mode=DISABLED``; the runner itself resets a finished
slot with its next episode's seed (``reset(seed=[...], options={"reset_mask": mask})``). Gymnasium's
default next-step autoreset would reset the env inside the following ``step`` call with no seed
and ignore that step's action, which makes per-episode seeds impossible.

This module is what spawned env workers import (to unpickle :func:`build_env`), so it imports no
torch and no policy code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

__all__ = ["build_env", "make_vector_env"]


def build_env(
    task: str | None,
    metadata: Mapping[str, Any] | None,
    env_kwargs: dict[str, Any],
    frames: bool,
) -> Any:
    """Env factory run inside each vector-env worker (module level so spawn can pickle it)."""
    from ebt_policy.envs import make_env, make_env_from_metadata
    from ebt_policy.envs.video import RenderFrames

    if frames:
        env_kwargs = {**env_kwargs, "render_mode": "rgb_array"}
    if metadata is not None:
        env = make_env_from_metadata(metadata, **env_kwargs)
    else:
        env = make_env(task, **env_kwargs)
    return RenderFrames(env) if frames else env


def make_vector_env(
    task: str,
    metadata: Mapping[str, Any] | None,
    env_kwargs: dict[str, Any],
    frames: bool,
    n_envs: int,
    context: str | None,
) -> Any:
    """``n_envs`` envs: in this process for one (SyncVectorEnv), else in worker processes
    (AsyncVectorEnv with start method ``context``); ``frames`` adds rendered frames to infos."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    env_fn = functools.partial(build_env, task, metadata, env_kwargs, frames)
    if n_envs == 1:
        return gym.vector.SyncVectorEnv([env_fn], autoreset_mode=AutoresetMode.DISABLED)
    return gym.vector.AsyncVectorEnv(
        [env_fn] * n_envs, autoreset_mode=AutoresetMode.DISABLED, context=context
    )
