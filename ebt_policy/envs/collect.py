"""Demonstration collection: run a task's scripted expert and write episodes to an episode store.

``collect(CollectConfig(task="lift", episodes=20, out="demos.zarr", seed=0, workers=2))`` plays
episode attempts with env seeds ``seed``, ``seed + 1``, ... in ``workers`` processes (each builds
its own env; one worker runs in this process; see :mod:`ebt_policy.envs.collect_workers`) and
stores the first ``episodes`` successful ones.

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

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebt_policy.envs.collect_workers import (
    AttemptSettings,
    InProcess,
    ProcessPool,
    new_expert,
    run_expert_episode,
)
from ebt_policy.envs.results import CollectSummary, EpisodeAttempt
from ebt_policy.errors import ConfigError, DatasetError
from ebt_policy.utils import default_mujoco_gl, progress_bar
from ebt_policy.utils.paths import check_output_path

__all__ = [
    "CollectConfig",
    "CollectSummary",
    "EpisodeAttempt",
    "collect",
    "new_expert",
    "run_expert_episode",
]


@dataclass
class CollectConfig:
    """Collect scripted-expert demonstrations into an episode store (resumes an existing one)."""

    task: str
    """Task name (see ebt_policy.envs.list_tasks())."""
    episodes: int
    """Episodes the store should hold at the end (counting ones already there)."""
    out: Path
    """Episode store path (.zarr); an existing one written by collect is resumed."""
    seed: int = 0
    """Env seed of the first attempt; attempt i uses seed + i."""
    images: bool = False
    """Also record the task's cameras (uint8 HWC images, --render-size pixels)."""
    render_size: int = 84
    """Camera image size in pixels."""
    workers: int = 1
    """Processes playing episodes (1: this process)."""
    keep_failures: bool = False
    """Also store unsuccessful episodes (collection.episode_success says which)."""
    max_episode_steps: int | None = None
    """End episodes after this many steps (default: the task's episode cap)."""
    max_attempts: int | None = None
    """Give up after this many attempts in this call (default 3 * needed + 20)."""
    progress: bool = False
    """Show a progress bar with the success rate and steps/s."""

    def __post_init__(self) -> None:
        for name, low in (("episodes", 1), ("workers", 1), ("render_size", 8)):
            if getattr(self, name) < low:
                raise ConfigError(f"collect: {name} must be >= {low}, got {getattr(self, name)}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(
                f"collect: max_episode_steps must be >= 1, got {self.max_episode_steps}"
            )


def _collection_keys(cfg: CollectConfig) -> dict[str, Any]:
    """What a resumed run must match, under the keys of the store's ``collection`` metadata.

    ``max_steps`` is the episode cap's on-disk name (stores written before the rename resume).
    """
    return {
        "task": cfg.task,
        "seed": cfg.seed,
        "images": bool(cfg.images),
        "keep_failures": bool(cfg.keep_failures),
        "max_steps": cfg.max_episode_steps,
        "env_kwargs": {"render_size": int(cfg.render_size)},
    }


def _open_or_create(cfg: CollectConfig, out: str) -> tuple[Any, dict[str, Any], bool]:
    """Open ``out`` for resuming (checking it matches the request) or create it."""
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.envs import get_task

    spec = get_task(cfg.task)
    expected = _collection_keys(cfg)
    if os.path.exists(out):
        store = EpisodeStore.open(out, "a", check_values=False)
        col = store.metadata.get("collection")
        if not isinstance(col, Mapping) or "next_seed" not in col:
            raise DatasetError(
                f"{out}: exists but has no 'collection' metadata (not written by "
                "`ebt-policy collect`); choose a new --out"
            )
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
    metadata = spec.dataset_metadata(images=bool(cfg.images), **expected["env_kwargs"])
    col = {
        "task": cfg.task,
        "expert": spec.expert_factory,
        **{key: value for key, value in expected.items() if key != "task"},
        "next_seed": cfg.seed,
        "kept_seeds": [],
        "failed_seeds": [],
        "episode_success": [],
    }
    store = EpisodeStore.create(out, {**metadata, "collection": col})
    return store, col, False


def collect(config: CollectConfig) -> CollectSummary:
    """Collect ``config.episodes`` expert episodes of ``config.task`` into the store ``config.out``.

    Normalisation statistics are written into the store at the end. Returns a
    :class:`~ebt_policy.envs.results.CollectSummary` of what this call did.
    """
    from ebt_policy.datasets import compute_stats
    from ebt_policy.envs import get_task

    cfg = config
    task, episodes, keep_failures = cfg.task, cfg.episodes, bool(cfg.keep_failures)
    get_task(task)  # TaskError for unknown names before anything is created
    out = os.fspath(cfg.out)
    check_output_path(out, "store", "CollectConfig.out")
    env_kwargs: dict[str, Any] = {"images": bool(cfg.images), "render_size": int(cfg.render_size)}
    if cfg.images:
        default_mujoco_gl()
    store, col, resumed = _open_or_create(cfg, out)
    kept: list[int] = list(col["kept_seeds"])
    needed = episodes - len(kept)
    limit = cfg.max_attempts if cfg.max_attempts is not None else 3 * max(needed, 0) + 20
    t0 = time.perf_counter()
    attempts = successes = new_steps = new_episodes = 0
    coverages: list[float] = []

    runner: InProcess | ProcessPool | None = None
    with progress_bar(
        f"collect {task}",
        episodes,
        completed=len(kept),
        fields={"success": "-", "speed": "-"},
        enabled=cfg.progress and needed > 0,
    ) as bar:
        try:
            if needed > 0:
                n_workers = min(cfg.workers, needed)
                settings = AttemptSettings(task, env_kwargs, keep_failures, cfg.max_episode_steps)
                one = n_workers == 1
                runner = InProcess(settings) if one else ProcessPool(settings, n_workers)
                next_submit = int(col["next_seed"])
                in_flight: set[int] = set()
                done: dict[int, EpisodeAttempt] = {}  # finished, not yet committed (out of order)
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
                        stored = attempt.success or keep_failures
                        if stored:
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
                        elapsed = max(time.perf_counter() - t0, 1e-9)
                        bar.update(
                            int(stored),
                            success=f"{successes / attempts:.0%} of {attempts}",
                            speed=f"{new_steps / elapsed:.0f} steps/s",
                        )
        finally:
            if runner is not None:
                runner.close()

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
