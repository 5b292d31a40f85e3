"""Closed-loop evaluation: run a policy for N seeded episodes over vectorised envs.

``evaluate(policy, EvalConfig(task="lift", episodes=50, seed=100_000, workers=4))`` plays
episode ``i`` with env seed ``seed + i`` in one of ``workers`` env slots
(``gymnasium.vector.AsyncVectorEnv``, each worker builds its own env and renderer; one worker uses
``SyncVectorEnv`` in this process; :mod:`ebt_policy.envs.vector_env` says why autoreset is off).
A slot takes the next episode as soon as its current one ends, so slow and fast episodes do not
wait for each other.

The receding-horizon bookkeeping is :class:`ebt_policy.rollout.RolloutExecutor`'s, one row per
slot: it stacks the last To observations (the first frame repeated at episode start), plans a
chunk for just the slots whose action queue is empty, and hands out the Ta actions of each chunk
one per step. It calls ``policy.start_episode(slot, seed)`` whenever a slot starts an episode and
passes ``rows=`` to ``predict_chunk``, so per-episode state (warm starts, expert phase machines,
seeded noise) follows its slot and results do not depend on how many workers run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.envs.results import EpisodeRecord, EvalResult
from ebt_policy.envs.vector_env import make_vector_env
from ebt_policy.errors import ConfigError, TaskError
from ebt_policy.policies.base import Policy
from ebt_policy.rollout import ChunkRecord, Plan, RolloutExecutor
from ebt_policy.utils import default_mujoco_gl, progress_bar
from ebt_policy.utils.paths import check_output_path

__all__ = ["ChunkRecord", "EpisodeRecord", "EvalConfig", "EvalResult", "evaluate"]

VIDEO_SIZE = 256  # frame size of videos of low-dim policies (image policies use their render_size)


@dataclass
class EvalConfig:
    """What :func:`evaluate` runs: which env, how many seeded episodes, what it writes.

    Pass exactly one of ``task`` (a task name) or ``metadata`` (an episode store's metadata, which
    rebuilds its exact env).
    """

    task: str | None = None
    metadata: Mapping[str, Any] | None = None
    episodes: int = 50
    seed: int = 100_000  # episode i uses env seed seed + i
    workers: int = 1  # env processes (AsyncVectorEnv); 1 runs the env in this process
    video_dir: str | os.PathLike | None = None  # mp4s of the first n_videos episodes go here
    n_videos: int = 1
    max_episode_steps: int | None = None  # stop episodes here (default: the env's own cap)
    # build the env with cameras (default: if the policy's shape_meta has rgb keys, or, without
    # shape_meta, if the dataset metadata lists rgb keys)
    images: bool | None = None
    render_size: int | None = None  # passed to the env factory (overrides the metadata's)
    env_kwargs: Mapping[str, Any] | None = None  # passed to the env factory
    json_path: str | os.PathLike | None = None  # also write the result there as JSON
    # multiprocessing start method of AsyncVectorEnv ("spawn" is safe with torch and EGL)
    context: str | None = "spawn"
    progress: bool = False  # show a progress bar

    def __post_init__(self) -> None:
        if (self.task is None) == (self.metadata is None):
            raise ConfigError("EvalConfig: pass exactly one of task=... or metadata=...")
        for name in ("episodes", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvalConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(
                f"EvalConfig: max_episode_steps must be >= 1, got {self.max_episode_steps}"
            )

    def task_name(self) -> str:
        """The task played: ``task``, or the name in ``metadata``."""
        if self.metadata is None:
            return str(self.task)
        meta_task = self.metadata.get("task")
        if not isinstance(meta_task, Mapping) or "name" not in meta_task:
            raise TaskError(f"EvalConfig: metadata has no task entry: {meta_task!r}")
        return str(meta_task["name"])


def _policy_rgb_keys(policy: Any) -> list[str] | None:
    """Camera keys the policy consumes, if it says (``policy.shape_meta``); None if unknown."""
    shape_meta = getattr(policy, "shape_meta", None)
    if isinstance(shape_meta, Mapping) and isinstance(shape_meta.get("obs"), Mapping):
        return [k for k, v in shape_meta["obs"].items() if v.get("type") == "rgb"]
    return None


def _env_kwargs(policy: Any, cfg: EvalConfig) -> tuple[dict[str, Any], bool]:
    """The env factory's kwargs and whether the env records video frames."""
    kwargs: dict[str, Any] = dict(cfg.env_kwargs or {})
    images = cfg.images
    if images is None:
        rgb = _policy_rgb_keys(policy)
        if rgb is not None:
            images = bool(rgb)
        elif cfg.metadata is not None:
            images = bool(cfg.metadata.get("obs_keys", {}).get("rgb"))
        else:
            images = False
    kwargs["images"] = bool(images)
    if cfg.render_size is not None:
        kwargs["render_size"] = int(cfg.render_size)
    record_video = cfg.video_dir is not None and cfg.n_videos > 0
    if record_video and not images and cfg.render_size is None:
        # without cameras in the observations, render_size only sets the video's frame size
        kwargs["render_size"] = VIDEO_SIZE
    if images or record_video:
        default_mujoco_gl()  # headless rendering; env workers inherit it (read at mujoco import)
    return kwargs, record_video


class _Slot:
    """The episode an env slot plays and its video (the executor holds its history and queue)."""

    def __init__(self) -> None:
        self.record: EpisodeRecord | None = None
        self.video: Any = None
        self.energy: float | None = None  # of the chunk being executed (drawn on video frames)
        self.steps: int | None = None


def _append_frame(slot: _Slot, info: dict[str, Any], row: int, task_name: str) -> None:
    """Add ``row``'s rendered frame (if the env sent one) to its video, annotated."""
    from ebt_policy.envs.video import FRAME_KEY

    if slot.video is None or not info.get(f"_{FRAME_KEY}", np.zeros(row + 1))[row]:
        return
    rec = slot.record
    assert rec is not None
    lines = [f"{task_name} seed {rec.seed} t={rec.length}"]
    if slot.energy is not None:
        lines.append(f"E={slot.energy:+.4f}" + (f" k={slot.steps}" if slot.steps else ""))
    if rec.success:
        lines.append("success")
    slot.video.append(info[FRAME_KEY][row], lines)


def _record_step(rec: EpisodeRecord, info: dict[str, Any], reward: float, row: int) -> None:
    """Add one env step of ``row`` (its reward and info entries) to its episode record."""
    rec.length += 1
    rec.total_reward += reward
    if info.get("_success", np.zeros(row + 1, bool))[row] and info["success"][row]:
        rec.success = True
    if info.get("_coverage", np.zeros(row + 1, bool))[row]:
        cov = float(info["coverage"][row])
        rec.coverage = cov if rec.coverage is None else max(rec.coverage, cov)


def evaluate(policy: Policy, config: EvalConfig) -> EvalResult:
    """Run ``policy`` for ``config.episodes`` episodes with env seeds ``seed``, ``seed + 1``, ...

    Args:
        policy: a :class:`~ebt_policy.policies.base.Policy`: ``n_obs_steps``, ``reset()``,
            ``start_episode(row, seed)`` and ``predict_chunk(obs_window, rows=...)``.
        config: the env, episodes, seeds, videos and outputs (see :class:`EvalConfig`).

    Returns:
        An :class:`EvalResult`; per-episode records are ordered by episode index.
    """
    cfg = config
    check_output_path(cfg.json_path, "file", "EvalConfig.json_path")
    check_output_path(cfg.video_dir, "dir", "EvalConfig.video_dir")
    if int(policy.n_obs_steps) < 1:
        raise ConfigError(f"evaluate: policy.n_obs_steps must be >= 1, got {policy.n_obs_steps}")
    from ebt_policy.envs import get_task

    task_name = cfg.task_name()
    spec = get_task(task_name)
    kwargs, record_video = _env_kwargs(policy, cfg)
    video_dir = Path(cfg.video_dir) if cfg.video_dir is not None else None
    fps = (
        float(cfg.metadata.get("control_hz", spec.control_hz)) if cfg.metadata else spec.control_hz
    )

    n_slots = min(cfg.workers, cfg.episodes)
    envs = make_vector_env(task_name, cfg.metadata, kwargs, record_video, n_slots, cfg.context)
    action_space = envs.single_action_space
    # action for slots with no episode left (they are reset and idle while others finish)
    idle_action = ((action_space.low + action_space.high) / 2).astype(action_space.dtype)

    slots = [_Slot() for _ in range(n_slots)]
    records: list[EpisodeRecord] = []
    latencies: list[float] = []

    def on_plan(plan: Plan) -> None:
        latencies.append(float(plan.prediction.latency_s))
        for row, chunk in zip(plan.rows, plan.records, strict=True):
            slot = slots[row]
            assert slot.record is not None
            slot.record.chunks.append(chunk)
            slot.energy, slot.steps = chunk.energy, chunk.steps

    executor = RolloutExecutor(policy, n_slots, on_plan=on_plan)  # resets the policy
    env_steps = 0
    next_episode = 0
    t_start = time.perf_counter()

    def start_episodes(rows: list[int]) -> None:
        """Reset ``rows`` with their next episode's seed (or idle them when none are left)."""
        nonlocal next_episode
        seeds: list[int | None] = [None] * n_slots
        mask = np.zeros(n_slots, dtype=np.bool_)
        want_frames = [False] * n_slots
        for row in rows:
            slot = slots[row]
            mask[row] = True
            if next_episode < cfg.episodes:
                ep = next_episode
                next_episode += 1
                seeds[row] = cfg.seed + ep
                slot.record = EpisodeRecord(ep, cfg.seed + ep, False, 0, None, 0.0, False, False)
                want_frames[row] = record_video and ep < cfg.n_videos
            else:
                slot.record = None
                executor.end_episode(row)
        if record_video:
            envs.set_attr("record_frames", want_frames)
        obs, info = envs.reset(seed=seeds, options={"reset_mask": mask})
        for row in rows:
            slot = slots[row]
            if slot.record is None:
                continue
            executor.start_episode(row, {k: v[row] for k, v in obs.items()}, slot.record.seed)
            if want_frames[row]:
                from ebt_policy.envs.video import EpisodeVideo

                assert video_dir is not None
                rec = slot.record
                name = f"episode_{rec.episode:03d}_seed{rec.seed}.mp4"
                slot.video = EpisodeVideo(video_dir / name, fps)
                slot.energy, slot.steps = None, None
                _append_frame(slot, info, row, task_name)

    bar_fields = {"success": "-"}
    with progress_bar(
        f"eval {task_name}", cfg.episodes, fields=bar_fields, enabled=cfg.progress
    ) as bar:
        try:
            start_episodes(list(range(n_slots)))
            while any(s.record is not None for s in slots):
                planned = executor.act()  # row -> action, for the slots playing an episode
                actions = np.stack([planned.get(row, idle_action) for row in range(n_slots)])
                obs, reward, terminated, truncated, info = envs.step(actions)
                finished: list[int] = []
                for row, slot in enumerate(slots):
                    rec = slot.record
                    if rec is None:
                        continue
                    env_steps += 1
                    _record_step(rec, info, float(reward[row]), row)
                    executor.observe(row, {k: v[row] for k, v in obs.items()})
                    _append_frame(slot, info, row, task_name)
                    cap = cfg.max_episode_steps
                    hit_cap = cap is not None and rec.length >= cap
                    if terminated[row] or truncated[row] or hit_cap:
                        rec.terminated = bool(terminated[row])
                        rec.truncated = bool(truncated[row] or (hit_cap and not terminated[row]))
                        if slot.video is not None:
                            rec.video = str(slot.video.close())
                            slot.video = None
                        records.append(rec)
                        finished.append(row)
                if finished:
                    rate = np.mean([r.success for r in records])
                    bar.update(len(finished), success=f"{rate:.0%}")
                    start_episodes(finished)
        finally:
            for slot in slots:
                if slot.video is not None:
                    slot.video.close()
            envs.close()

    records.sort(key=lambda r: r.episode)
    result = EvalResult(
        task=task_name,
        policy=str(getattr(policy, "name", type(policy).__name__)),
        seed=cfg.seed,
        workers=n_slots,
        episodes=records,
        wall_time_s=time.perf_counter() - t_start,
        env_steps=env_steps,
        predict_latencies_s=latencies,
        planner=_planner(policy),
    )
    if cfg.json_path is not None:
        result.write_json(cfg.json_path)
    return result


def _planner(policy: Any) -> dict[str, Any] | None:
    """An EBT policy's engine options and the path its last plan took (None for others)."""
    engine = getattr(policy, "engine", None)
    if engine is None:
        return None
    return {**dataclasses.asdict(engine.options), "last_path": engine.last_path}
