"""Demonstration collection: run a task's scripted expert and write episodes to an episode store.

``collect(task="lift", episodes=20, out="demos.zarr", seed=0, workers=2)`` plays episode attempts
with env seeds ``seed``, ``seed + 1``, ... in ``workers`` processes (each builds its own env; one
worker runs in this process) and stores the first ``episodes`` successful ones.

Determinism: attempts are committed in seed order whatever order the workers finish them in, so the
store holds the same episodes for any number of workers.

Crash safety and resume: only this (parent) process writes. Each committed attempt is recorded in
the store's ``collection`` metadata (``next_seed``, kept and failed seeds) right after the
episode itself is appended atomically by :meth:`EpisodeStore.add_episode`. Running ``collect``
again with the same ``out`` continues from ``next_seed`` to ``episodes`` stored episodes. A run
killed between appending an episode and recording it leaves exactly one episode more than the
metadata lists; that episode is the attempt with seed ``next_seed`` and is recognised on resume.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import ConfigError, DatasetError

__all__ = ["CollectSummary", "EpisodeAttempt", "collect", "new_expert", "run_expert_episode"]


def new_expert(spec: Any, seed: int | None) -> Any:
    """Build and reset the expert for one episode played with env seed ``seed``.

    The collector and :class:`ebt_policy.envs.expert_policy.ExpertPolicy` both call this, so an
    episode with the same seed sees the same expert (same random approach, same noise) in both.
    """
    expert = spec.make_expert(seed)
    expert.reset()
    return expert


@dataclass
class EpisodeAttempt:
    """One expert episode: its seed, outcome and (unless dropped) its data."""

    seed: int
    success: bool
    length: int
    coverage: float | None = None
    data: dict[str, np.ndarray] | None = None  # key -> (T, ...), "action" included


@dataclass
class CollectSummary:
    """What one :func:`collect` call did (``attempts`` etc. count this call only)."""

    task: str
    out: str
    requested: int
    n_episodes: int  # episodes in the store at the end
    n_steps: int  # steps in the store at the end
    new_episodes: int
    new_steps: int
    attempts: int
    successes: int
    wall_time_s: float
    resumed: bool
    next_seed: int
    coverages: list[float] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else float("nan")

    @property
    def steps_per_s(self) -> float:
        return self.new_steps / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate, "steps_per_s": self.steps_per_s}


def run_expert_episode(
    env: Any, spec: Any, seed: int, keep_data: bool = True, max_steps: int | None = None
) -> EpisodeAttempt:
    """Play one episode of ``spec``'s expert in ``env`` from ``env.reset(seed=seed)``.

    Observation ``t`` is stored with the action taken from it; the episode ends when the env
    terminates (success, by default) or truncates (the task's horizon), or after ``max_steps``.
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
        if terminated or truncated or (max_steps is not None and len(actions) >= max_steps):
            break
    data = None
    if keep_data:
        data = {key: np.stack(values) for key, values in frames.items()}  # (T, ...)
        data["action"] = np.stack(actions)  # (T, Da)
    return EpisodeAttempt(seed, success, len(actions), coverage, data)


# ---------------------------------------------------------------------------------- workers


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies: a killed collect leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(
    task: str,
    env_kwargs: dict[str, Any],
    keep_failures: bool,
    max_steps: int | None,
    seeds: Any,
    results: Any,
    parent_pid: int,
) -> None:
    """Worker process: build the env once, then play the seeds it is handed until None."""
    _die_with_parent()
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from ebt_policy.envs import get_task, make_env

        spec = get_task(task)
        env = make_env(task, **env_kwargs)
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
                attempt = run_expert_episode(env, spec, seed, max_steps=max_steps)
                if not (attempt.success or keep_failures):
                    attempt.data = None  # do not ship data the parent will drop
                results.put(("ok", seed, attempt))
            except BaseException:
                results.put(("error", seed, traceback.format_exc()))
                return
    finally:
        env.close()


class _InProcess:
    """workers=1: play seeds in this process (no spawn cost, a kill stops everything at once)."""

    def __init__(
        self, task: str, env_kwargs: dict[str, Any], keep_failures: bool, max_steps: int | None
    ) -> None:
        from ebt_policy.envs import get_task, make_env

        self.spec = get_task(task)
        self.env = make_env(task, **env_kwargs)
        self.keep_failures = keep_failures
        self.max_steps = max_steps
        self.todo: list[int] = []

    def submit(self, seed: int) -> None:
        self.todo.append(seed)

    def get(self) -> EpisodeAttempt:
        seed = self.todo.pop(0)
        attempt = run_expert_episode(self.env, self.spec, seed, max_steps=self.max_steps)
        if not (attempt.success or self.keep_failures):
            attempt.data = None
        return attempt

    def close(self) -> None:
        self.env.close()


class _Pool:
    """workers>1: spawned processes fed seeds through a queue."""

    def __init__(
        self,
        task: str,
        env_kwargs: dict[str, Any],
        keep_failures: bool,
        max_steps: int | None,
        workers: int,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.seeds = ctx.Queue()
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(
                    task,
                    env_kwargs,
                    keep_failures,
                    max_steps,
                    self.seeds,
                    self.results,
                    os.getpid(),
                ),
                daemon=True,
            )
            for _ in range(workers)
        ]
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


# ---------------------------------------------------------------------------------- collect


def _open_or_create(
    out: str,
    task: str,
    seed: int,
    images: bool,
    keep_failures: bool,
    max_steps: int | None,
    env_kwargs: dict[str, Any],
) -> tuple[Any, dict[str, Any], bool]:
    """Open ``out`` for resuming (checking it matches the request) or create it."""
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.envs import get_task

    spec = get_task(task)
    if os.path.exists(out):
        store = EpisodeStore.open(out, "a", check_values=False)
        meta = store.metadata
        col = meta.get("collection")
        if not isinstance(col, Mapping) or "next_seed" not in col:
            raise DatasetError(
                f"{out}: exists but has no 'collection' metadata (not written by "
                "`ebt-policy collect`); choose a new --out"
            )
        expected = {
            "task": task,
            "seed": seed,
            "images": images,
            "keep_failures": keep_failures,
            "max_steps": max_steps,
            "env_kwargs": env_kwargs,
        }
        for key, want in expected.items():
            if col.get(key) != want:
                raise DatasetError(
                    f"{out}: collection.{key} is {col.get(key)!r} but this run asks for {want!r}; "
                    "rerun with the original options to resume, or choose a new --out"
                )
        col = dict(col)
        kept = list(col["kept_seeds"])
        if store.n_episodes == len(kept) + 1:
            # killed after appending the episode of seed next_seed but before recording it
            kept.append(int(col["next_seed"]))
            col["kept_seeds"] = kept
            col["episode_success"] = [*col["episode_success"], True]
            col["next_seed"] = int(col["next_seed"]) + 1
            store.update_metadata(collection=col)
        elif store.n_episodes != len(kept):
            raise DatasetError(
                f"{out}: holds {store.n_episodes} episodes but collection.kept_seeds lists "
                f"{len(kept)}; the store was modified outside `ebt-policy collect`"
            )
        return store, col, True
    metadata = spec.dataset_metadata(images=images, **env_kwargs)
    col = {
        "task": task,
        "expert": spec.expert_factory,
        "seed": seed,
        "images": images,
        "keep_failures": keep_failures,
        "max_steps": max_steps,
        "env_kwargs": env_kwargs,
        "next_seed": seed,
        "kept_seeds": [],
        "failed_seeds": [],
        "episode_success": [],
    }
    store = EpisodeStore.create(out, {**metadata, "collection": col})
    return store, col, False


def collect(
    task: str,
    episodes: int,
    out: str | os.PathLike,
    seed: int = 0,
    images: bool = False,
    workers: int = 1,
    keep_failures: bool = False,
    render_size: int = 84,
    max_steps: int | None = None,
    max_attempts: int | None = None,
    progress: bool = False,
) -> CollectSummary:
    """Collect ``episodes`` expert episodes of ``task`` into the episode store ``out``.

    Args:
        task: registered task name.
        episodes: episodes the store should hold at the end (counting ones already there).
        out: episode store path; an existing one written by collect is resumed.
        seed: env seed of the first attempt (attempt ``i`` uses ``seed + i``).
        images: record camera observations (uint8 HWC, ``render_size`` pixels).
        workers: processes playing episodes (1: this process).
        keep_failures: also store unsuccessful episodes (``collection.episode_success`` says which).
        max_steps: end episodes after this many steps (default: the task's horizon).
        max_attempts: stop after this many attempts in this call (default ``3 * needed + 20``).
        progress: show a progress bar with the success rate and steps/s.

    Returns:
        A :class:`CollectSummary`. Normalisation statistics are written into the store.
    """
    from ebt_policy.datasets import compute_stats
    from ebt_policy.envs import get_task

    if episodes < 1:
        raise ConfigError(f"collect: episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ConfigError(f"collect: workers must be >= 1, got {workers}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"collect: max_steps must be >= 1, got {max_steps}")
    get_task(task)  # TaskError for unknown names before anything is created
    out = os.fspath(out)
    env_kwargs: dict[str, Any] = {"images": bool(images), "render_size": int(render_size)}
    if images:
        os.environ.setdefault("MUJOCO_GL", "egl")
    store, col, resumed = _open_or_create(
        out,
        task,
        seed,
        bool(images),
        bool(keep_failures),
        max_steps,
        {"render_size": int(render_size)},
    )
    kept: list[int] = list(col["kept_seeds"])
    needed = episodes - len(kept)
    limit = max_attempts if max_attempts is not None else 3 * max(needed, 0) + 20
    t0 = time.perf_counter()
    attempts = successes = new_steps = new_episodes = 0
    coverages: list[float] = []

    bar = None
    if progress and needed > 0:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn(f"collect {task}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("success {task.fields[rate]}  {task.fields[sps]} steps/s"),
            TimeElapsedColumn(),
        )
        bar.start()
        bar_id = bar.add_task("collect", total=episodes, completed=len(kept), rate="-", sps="-")

    runner: _InProcess | _Pool | None = None
    try:
        if needed > 0:
            n_workers = min(workers, needed)
            if n_workers == 1:
                runner = _InProcess(task, env_kwargs, keep_failures, max_steps)
            else:
                runner = _Pool(task, env_kwargs, keep_failures, max_steps, n_workers)
            next_submit = int(col["next_seed"])
            in_flight: set[int] = set()
            done: dict[int, EpisodeAttempt] = {}  # finished but not yet committed (out of order)
            while len(kept) < episodes:
                # keep every worker busy, but do not start more attempts than could be needed
                pending_ok = sum(1 for a in done.values() if a.success or keep_failures)
                while (
                    len(in_flight) < n_workers + (1 if n_workers > 1 else 0)
                    and len(kept) + pending_ok + len(in_flight) < episodes
                    and attempts + len(done) + len(in_flight) < limit
                ):
                    runner.submit(next_submit)
                    in_flight.add(next_submit)
                    next_submit += 1
                if not in_flight and col["next_seed"] not in done:
                    break  # attempt limit reached
                if col["next_seed"] not in done:
                    attempt = runner.get()
                    in_flight.discard(attempt.seed)
                    done[attempt.seed] = attempt
                # commit finished attempts in seed order
                while col["next_seed"] in done and len(kept) < episodes:
                    attempt = done.pop(col["next_seed"])
                    attempts += 1
                    successes += int(attempt.success)
                    if attempt.coverage is not None:
                        coverages.append(attempt.coverage)
                    if attempt.success or keep_failures:
                        assert attempt.data is not None
                        store.add_episode(attempt.data)
                        kept.append(attempt.seed)
                        col["kept_seeds"] = kept
                        col["episode_success"] = [*col["episode_success"], attempt.success]
                        new_episodes += 1
                        new_steps += attempt.length
                    else:
                        col["failed_seeds"] = [*col["failed_seeds"], attempt.seed]
                    col["next_seed"] = attempt.seed + 1
                    store.update_metadata(collection=col)
                    if bar is not None:
                        elapsed = time.perf_counter() - t0
                        bar.update(
                            bar_id,
                            completed=len(kept),
                            rate=f"{successes / attempts:.0%} of {attempts}",
                            sps=f"{new_steps / max(elapsed, 1e-9):.0f}",
                        )
    finally:
        if runner is not None:
            runner.close()
        if bar is not None:
            bar.stop()

    wall = time.perf_counter() - t0
    if store.n_episodes > 0 and (new_episodes > 0 or "stats" not in store.metadata):
        compute_stats(store, write=True)
    summary = CollectSummary(
        task=task,
        out=out,
        requested=episodes,
        n_episodes=store.n_episodes,
        n_steps=store.n_steps,
        new_episodes=new_episodes,
        new_steps=new_steps,
        attempts=attempts,
        successes=successes,
        wall_time_s=wall,
        resumed=resumed,
        next_seed=int(col["next_seed"]),
        coverages=coverages,
    )
    store.close()
    return summary


def summary_table(summary: CollectSummary) -> Any:
    """A rich Table of a :class:`CollectSummary`."""
    from rich.table import Table

    table = Table(title=f"collect {summary.task} -> {Path(summary.out).name}")
    table.add_column("")
    table.add_column("value", justify="right")
    rate = "-" if not summary.attempts else f"{summary.success_rate:.1%}"
    rows = [
        ("episodes in store", f"{summary.n_episodes} / {summary.requested}"),
        ("steps in store", str(summary.n_steps)),
        ("episodes kept (this run)", str(summary.new_episodes)),
        ("attempts (this run)", str(summary.attempts)),
        ("expert success rate", rate),
        ("steps (this run)", str(summary.new_steps)),
        ("time", f"{summary.wall_time_s:.1f} s"),
        ("steps/s", "-" if not summary.new_steps else f"{summary.steps_per_s:.0f}"),
        ("resumed", "yes" if summary.resumed else "no"),
    ]
    if summary.coverages:
        rows.append(("mean max coverage", f"{np.mean(summary.coverages):.3f}"))
    for name, value in rows:
        table.add_row(name, value)
    return table
