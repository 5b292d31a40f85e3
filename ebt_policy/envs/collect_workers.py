"""Playing expert episodes: one in this process, or many in spawned worker processes.

:func:`run_expert_episode` plays one seeded episode of a task's scripted expert; the collector runs
attempts (as :class:`AttemptSettings` says) through :class:`InProcess` (workers=1) or
:class:`ProcessPool` (workers>1: each process builds its own env once and plays the seeds it is
handed). Only the parent process writes the store.

Spawned workers import this module: it imports no torch and no policy code.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebt_policy.envs.results import EpisodeAttempt
from ebt_policy.utils import default_mujoco_gl

__all__ = ["AttemptSettings", "InProcess", "ProcessPool", "new_expert", "run_expert_episode"]


def new_expert(spec: Any, seed: int | None) -> Any:
    """Build and reset the expert for one episode played with env seed ``seed``.

    The collector and :class:`ebt_policy.envs.expert_policy.ExpertPolicy` both call this, so an
    episode with the same seed sees the same expert (same random approach, same noise) in both.
    """
    expert = spec.make_expert(seed)
    expert.reset()
    return expert


def run_expert_episode(
    env: Any, spec: Any, seed: int, keep_data: bool = True, max_episode_steps: int | None = None
) -> EpisodeAttempt:
    """Play one episode of ``spec``'s expert in ``env`` from ``env.reset(seed=seed)``.

    Observation ``t`` is stored with the action taken from it; the episode ends when the env
    terminates (success, by default) or truncates (the task's episode cap), or after
    ``max_episode_steps``.
    """
    obs, info = env.reset(seed=seed)
    expert = new_expert(spec, seed)
    frames: dict[str, list[np.ndarray]] = {key: [] for key in obs}
    actions: list[np.ndarray] = []
    success = False
    coverage: float | None = None
    while True:
        if keep_data:
            for key, value in obs.items():
                frames[key].append(np.asarray(value))
        action = np.asarray(expert.act(obs), dtype=np.float32)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info.get("success", False))
        if "coverage" in info:
            cov = float(info["coverage"])
            coverage = cov if coverage is None else max(coverage, cov)
        capped = max_episode_steps is not None and len(actions) >= max_episode_steps
        if terminated or truncated or capped:
            break
    data = None
    if keep_data:
        data = {key: np.stack(values) for key, values in frames.items()}  # (T, ...)
        data["action"] = np.stack(actions)  # (T, Da)
    return EpisodeAttempt(seed, success, len(actions), coverage, data)


@dataclass(frozen=True)
class AttemptSettings:
    """How every attempt of one collection is played (picklable: sent to spawned workers)."""

    task: str
    env_kwargs: dict[str, Any]
    keep_failures: bool
    max_episode_steps: int | None

    def build(self) -> tuple[Any, Any]:
        """The task's spec and a fresh env."""
        from ebt_policy.envs import get_task, make_env

        return get_task(self.task), make_env(self.task, **self.env_kwargs)

    def play(self, env: Any, spec: Any, seed: int) -> EpisodeAttempt:
        """One attempt; a failure's data is dropped unless kept (so workers do not ship it)."""
        attempt = run_expert_episode(env, spec, seed, max_episode_steps=self.max_episode_steps)
        if not (attempt.success or self.keep_failures):
            attempt.data = None
        return attempt


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies: a killed collect leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(settings: AttemptSettings, seeds: Any, results: Any, parent_pid: int) -> None:
    """Worker process: build the env once, then play the seeds it is handed until None."""
    _die_with_parent()
    default_mujoco_gl()
    try:
        spec, env = settings.build()
    except BaseException:
        results.put(("error", None, traceback.format_exc()))
        return
    try:
        while True:
            try:
                seed = seeds.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    return
                continue
            if seed is None:
                return
            try:
                attempt = settings.play(env, spec, seed)
                results.put(("ok", seed, attempt))
            except BaseException:
                results.put(("error", seed, traceback.format_exc()))
                return
    finally:
        env.close()


class InProcess:
    """workers=1: play seeds in this process (no spawn cost, a kill stops everything at once)."""

    def __init__(self, settings: AttemptSettings) -> None:
        self.settings = settings
        self.spec, self.env = settings.build()
        self.todo: list[int] = []

    def submit(self, seed: int) -> None:
        self.todo.append(seed)

    def get(self) -> EpisodeAttempt:
        seed = self.todo.pop(0)
        return self.settings.play(self.env, self.spec, seed)

    def close(self) -> None:
        self.env.close()


class ProcessPool:
    """workers>1: spawned processes fed seeds through a queue."""

    def __init__(self, settings: AttemptSettings, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.seeds = ctx.Queue()
        self.results = ctx.Queue()
        args = (settings, self.seeds, self.results, os.getpid())
        self.procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(workers)]
        for proc in self.procs:
            proc.start()

    def submit(self, seed: int) -> None:
        self.seeds.put(seed)

    def get(self) -> EpisodeAttempt:
        while True:
            try:
                status, seed, payload = self.results.get(timeout=5.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self.procs):
                    raise RuntimeError("all collection workers died") from None
                continue
            if status == "error":
                where = "building the env" if seed is None else f"episode with seed {seed}"
                raise RuntimeError(f"collection worker failed while {where}:\n{payload}")
            return payload

    def close(self) -> None:
        for _ in self.procs:
            self.seeds.put(None)
        for proc in self.procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.seeds.close()
        self.results.close()
