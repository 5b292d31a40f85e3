"""Closed-loop evaluation: run a policy for N seeded episodes over vectorised envs.

``evaluate(policy, task="lift", episodes=50, seed=100_000, workers=4)`` plays episode ``i`` with env
seed ``seed + i`` in one of ``workers`` env slots (``gymnasium.vector.AsyncVectorEnv``, each worker
builds its own env and renderer; one worker uses ``SyncVectorEnv`` in this process). A slot takes
the next episode as soon as its current one ends, so slow and fast episodes do not wait for each
other.

Autoreset: the vector env runs with ``autoreset_mode=DISABLED``; the runner itself resets a finished
slot with its next episode's seed (``reset(seed=[...], options={"reset_mask": mask})``). Gymnasium's
default next-step autoreset would reset the env inside the following ``step`` call with no seed
and ignore that step's action, which makes per-episode seeds impossible.

Per slot the runner stacks the last To observations (the first frame repeated at episode start),
asks the policy for a chunk when the slot's action queue is empty, and executes the Ta actions of
the chunk one per step. Only the slots whose queue is empty are planned for; the batch passed to
``predict_chunk`` holds just those slots.

Per-row policy state: a policy may define ``start_episode(row, seed)`` and accept
``predict_chunk(obs_window, rows=...)`` (as :class:`ebt_policy.envs.expert_policy.ExpertPolicy`
does). The runner then tells it which slot each batch element is and when a slot starts an
episode (with the episode's seed), so per-episode state (warm starts, expert phase machines,
per-episode noise) follows the slot. Other policies get ``reset()`` at the start, before planning
the first chunk of any episode, and whenever the set of slots they plan for differs from their
previous call (slots fell out of step), so no state leaks from one slot or episode to another.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebt_policy.errors import ConfigError, TaskError

if TYPE_CHECKING:  # env workers unpickle this module's env factory: keep torch out of it
    from ebt_policy.policies.base import ChunkPrediction

__all__ = ["ChunkRecord", "EpisodeRecord", "EvalResult", "evaluate"]

VIDEO_SIZE = 256  # frame size of videos of low-dim policies (image policies use their render_size)


@dataclass
class ChunkRecord:
    """What the policy reported for one planned chunk of one episode."""

    t: int  # episode step at which the chunk was planned
    energy: float | None
    steps: int | None
    grad_norm: float | None
    latency_s: float  # wall time of the predict_chunk call that planned it (shared by its batch)
    batch: int  # how many episodes that call planned for


@dataclass
class EpisodeRecord:
    """One evaluated episode."""

    episode: int
    seed: int
    success: bool  # the task's success check held at any step
    length: int  # env steps taken
    coverage: float | None  # max over the episode of info["coverage"] (pusht), else None
    total_reward: float
    terminated: bool
    truncated: bool  # truncated by the env's horizon or by max_steps
    chunks: list[ChunkRecord] = field(default_factory=list)
    video: str | None = None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`: rates, per-episode records and aggregates."""

    task: str
    policy: str
    seed: int
    workers: int
    episodes: list[EpisodeRecord]
    wall_time_s: float
    env_steps: int
    predict_latencies_s: list[float]  # one per predict_chunk call

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_coverage(self) -> float | None:
        cov = [e.coverage for e in self.episodes if e.coverage is not None]
        return float(np.mean(cov)) if cov else None

    def aggregates(self) -> dict[str, Any]:
        """Summary numbers over all episodes and chunks (None where the policy reports nothing)."""
        chunks = [c for e in self.episodes for c in e.chunks]
        energies = [c.energy for c in chunks if c.energy is not None]
        steps = [c.steps for c in chunks if c.steps is not None]
        grads = [c.grad_norm for c in chunks if c.grad_norm is not None]
        lat = self.predict_latencies_s
        return {
            "success_rate": self.success_rate,
            "n_success": int(sum(e.success for e in self.episodes)),
            "n_episodes": self.n_episodes,
            "mean_coverage": self.mean_coverage,
            "mean_length": float(np.mean([e.length for e in self.episodes]))
            if self.episodes
            else None,
            "n_chunks": len(chunks),
            "mean_steps": float(np.mean(steps)) if steps else None,
            "max_steps": int(max(steps)) if steps else None,
            "latency_p50_ms": None if not lat else 1e3 * _percentile(lat, 50),
            "latency_p99_ms": None if not lat else 1e3 * _percentile(lat, 99),
            "energy_min": float(min(energies)) if energies else None,
            "energy_max": float(max(energies)) if energies else None,
            "energy_mean": float(np.mean(energies)) if energies else None,
            "grad_norm_mean": float(np.mean(grads)) if grads else None,
            "env_steps": self.env_steps,
            "wall_time_s": self.wall_time_s,
            "env_steps_per_s": self.env_steps / self.wall_time_s if self.wall_time_s > 0 else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: run info, aggregates and every episode with its chunks."""
        return {
            "task": self.task,
            "policy": self.policy,
            "seed": self.seed,
            "workers": self.workers,
            **self.aggregates(),
            "episodes": [asdict(e) for e in self.episodes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The result as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path


# ---------------------------------------------------------------------------------- env building


def _build_env(
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


def _policy_rgb_keys(policy: Any) -> list[str] | None:
    """Camera keys the policy consumes, if it says (``policy.shape_meta``); None if unknown."""
    shape_meta = getattr(policy, "shape_meta", None)
    if isinstance(shape_meta, Mapping) and isinstance(shape_meta.get("obs"), Mapping):
        return [k for k, v in shape_meta["obs"].items() if v.get("type") == "rgb"]
    return None


def _accepts_rows(policy: Any) -> bool:
    try:
        params = inspect.signature(policy.predict_chunk).parameters
    except (TypeError, ValueError):
        return False
    return "rows" in params and callable(getattr(policy, "start_episode", None))


# ---------------------------------------------------------------------------------- the runner


class _Slot:
    """State of one env slot: the episode it plays, its observation history and action queue."""

    def __init__(self) -> None:
        self.record: EpisodeRecord | None = None
        self.history: deque[dict[str, np.ndarray]] = deque()
        self.queue: deque[np.ndarray] = deque()
        self.energy: float | None = None
        self.steps: int | None = None
        self.video: Any = None


def evaluate(
    policy: Any,
    task: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    episodes: int = 50,
    seed: int = 100_000,
    workers: int = 1,
    video_dir: str | os.PathLike | None = None,
    n_videos: int = 1,
    max_steps: int | None = None,
    images: bool | None = None,
    render_size: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    json_path: str | os.PathLike | None = None,
    context: str | None = "spawn",
    progress: bool = False,
) -> EvalResult:
    """Run ``policy`` for ``episodes`` episodes with env seeds ``seed``, ``seed + 1``, ...

    Args:
        policy: anything with ``n_obs_steps``, ``n_action_steps``, ``reset()`` and
            ``predict_chunk(obs_window) -> ChunkPrediction`` (see module docstring for the optional
            per-row extension).
        task: task name; or ``metadata``: an episode store's metadata (rebuilds its exact env).
        workers: env processes (AsyncVectorEnv); 1 runs the env in this process.
        video_dir: write mp4 videos of the first ``n_videos`` episodes there (rendered by the env,
            energy drawn per chunk).
        max_steps: stop episodes after this many steps (default: the env's own horizon).
        images: build the env with cameras (default: if the policy's shape_meta has rgb keys, or,
            without shape_meta, if the dataset metadata lists rgb keys).
        render_size / env_kwargs: passed to the env factory (override the metadata's).
        json_path: also write the result there as JSON.
        context: multiprocessing start method for AsyncVectorEnv ("spawn" is safe with torch and
            EGL in the parent).
        progress: show a progress bar (rich).

    Returns:
        An :class:`EvalResult`; per-episode records are ordered by episode index.
    """
    if (task is None) == (metadata is None):
        raise ConfigError("evaluate: pass exactly one of task=... or metadata=...")
    if episodes < 1:
        raise ConfigError(f"evaluate: episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ConfigError(f"evaluate: workers must be >= 1, got {workers}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"evaluate: max_steps must be >= 1, got {max_steps}")
    n_obs = int(policy.n_obs_steps)
    if n_obs < 1:
        raise ConfigError(f"evaluate: policy.n_obs_steps must be >= 1, got {n_obs}")

    from ebt_policy.envs import get_task

    if metadata is not None:
        meta_task = metadata.get("task")
        if not isinstance(meta_task, Mapping) or "name" not in meta_task:
            raise TaskError(f"evaluate: metadata has no task entry: {meta_task!r}")
        task_name = str(meta_task["name"])
    else:
        task_name = str(task)
    spec = get_task(task_name)

    kwargs: dict[str, Any] = dict(env_kwargs or {})
    if images is None:
        rgb = _policy_rgb_keys(policy)
        if rgb is not None:
            images = bool(rgb)
        elif metadata is not None:
            images = bool(metadata.get("obs_keys", {}).get("rgb"))
        else:
            images = False
    kwargs["images"] = bool(images)
    if render_size is not None:
        kwargs["render_size"] = int(render_size)
    record_video = video_dir is not None and n_videos > 0
    if record_video and not images and render_size is None:
        # without cameras in the observations, render_size only sets the video's frame size
        kwargs["render_size"] = VIDEO_SIZE
    video_dir = Path(video_dir) if video_dir is not None else None
    if images or record_video:
        # headless rendering; env workers inherit it (it must be set before mujoco is imported)
        os.environ.setdefault("MUJOCO_GL", "egl")
    fps = float(metadata.get("control_hz", spec.control_hz)) if metadata else spec.control_hz

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    n_slots = min(workers, episodes)
    env_fn = functools.partial(_build_env, task_name, metadata, kwargs, record_video)
    if n_slots == 1:
        envs = gym.vector.SyncVectorEnv([env_fn], autoreset_mode=AutoresetMode.DISABLED)
    else:
        envs = gym.vector.AsyncVectorEnv(
            [env_fn] * n_slots, autoreset_mode=AutoresetMode.DISABLED, context=context
        )
    action_space = envs.single_action_space
    # action for slots with no episode left (they are reset and idle while others finish)
    idle_action = ((action_space.low + action_space.high) / 2).astype(action_space.dtype)

    row_aware = _accepts_rows(policy)
    policy.reset()
    last_rows: list[int] | None = None
    slots = [_Slot() for _ in range(n_slots)]
    records: list[EpisodeRecord] = []
    latencies: list[float] = []
    env_steps = 0
    next_episode = 0
    t_start = time.perf_counter()

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn("eval {task.fields[task_name]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("success {task.fields[rate]}"),
        )
        bar.start()
        bar_id = bar.add_task("eval", total=episodes, task_name=task_name, rate="-")

    def start_episodes(rows: list[int]) -> None:
        """Reset ``rows`` with their next episode's seed (or idle them when none are left)."""
        nonlocal next_episode
        seeds: list[int | None] = [None] * n_slots
        mask = np.zeros(n_slots, dtype=np.bool_)
        want_frames = [False] * n_slots
        for row in rows:
            slot = slots[row]
            mask[row] = True
            slot.queue.clear()
            slot.history = deque(maxlen=n_obs)
            if next_episode < episodes:
                ep = next_episode
                next_episode += 1
                seeds[row] = seed + ep
                slot.record = EpisodeRecord(ep, seed + ep, False, 0, None, 0.0, False, False)
                want_frames[row] = record_video and ep < n_videos
            else:
                slot.record = None
        if record_video:
            envs.set_attr("record_frames", want_frames)
        obs, info = envs.reset(seed=seeds, options={"reset_mask": mask})
        for row in rows:
            slot = slots[row]
            if slot.record is None:
                continue
            first = {k: np.array(v[row]) for k, v in obs.items()}
            slot.history.extend([first] * n_obs)
            if row_aware:
                policy.start_episode(row, slot.record.seed)
            if want_frames[row]:
                from ebt_policy.envs.video import EpisodeVideo

                assert video_dir is not None
                rec = slot.record
                slot.video = EpisodeVideo(
                    video_dir / f"episode_{rec.episode:03d}_seed{rec.seed}.mp4", fps
                )
                slot.energy, slot.steps = None, None
                _append_frame(slot, info, row)

    def _append_frame(slot: _Slot, info: dict[str, Any], row: int) -> None:
        from ebt_policy.envs.video import FRAME_KEY

        if slot.video is None or not info.get(f"_{FRAME_KEY}", np.zeros(n_slots))[row]:
            return
        rec = slot.record
        assert rec is not None
        lines = [f"{task_name} seed {rec.seed} t={rec.length}"]
        if slot.energy is not None:
            lines.append(f"E={slot.energy:+.4f}" + (f" k={slot.steps}" if slot.steps else ""))
        if rec.success:
            lines.append("success")
        slot.video.append(info[FRAME_KEY][row], lines)

    try:
        start_episodes(list(range(n_slots)))
        while any(s.record is not None for s in slots):
            need = [i for i, s in enumerate(slots) if s.record is not None and not s.queue]
            if need:
                window = {
                    key: np.stack([np.stack([h[key] for h in slots[r].history]) for r in need])
                    for key in slots[need[0]].history[0]
                }  # key -> (B, To, ...)
                if row_aware:
                    pred = policy.predict_chunk(window, rows=need)
                else:
                    fresh = any(slots[r].record.length == 0 for r in need)  # type: ignore[union-attr]
                    if last_rows is not None and (last_rows != need or fresh):
                        policy.reset()
                    pred = policy.predict_chunk(window)
                last_rows = need
                _take_chunks(pred, need, slots, latencies)
            actions = np.stack(
                [s.queue.popleft() if s.record is not None else idle_action for s in slots]
            )
            obs, reward, terminated, truncated, info = envs.step(actions)
            finished: list[int] = []
            for row, slot in enumerate(slots):
                rec = slot.record
                if rec is None:
                    continue
                env_steps += 1
                rec.length += 1
                rec.total_reward += float(reward[row])
                if info.get("_success", np.zeros(n_slots, bool))[row] and info["success"][row]:
                    rec.success = True
                if info.get("_coverage", np.zeros(n_slots, bool))[row]:
                    cov = float(info["coverage"][row])
                    rec.coverage = cov if rec.coverage is None else max(rec.coverage, cov)
                slot.history.append({k: np.array(v[row]) for k, v in obs.items()})
                _append_frame(slot, info, row)
                hit_limit = max_steps is not None and rec.length >= max_steps
                if terminated[row] or truncated[row] or hit_limit:
                    rec.terminated = bool(terminated[row])
                    rec.truncated = bool(truncated[row] or (hit_limit and not terminated[row]))
                    if slot.video is not None:
                        rec.video = str(slot.video.close())
                        slot.video = None
                    records.append(rec)
                    finished.append(row)
            if finished:
                if bar is not None:
                    rate = np.mean([r.success for r in records])
                    bar.update(bar_id, completed=len(records), rate=f"{rate:.0%}")
                start_episodes(finished)
    finally:
        for slot in slots:
            if slot.video is not None:
                slot.video.close()
        envs.close()
        if bar is not None:
            bar.stop()

    records.sort(key=lambda r: r.episode)
    result = EvalResult(
        task=task_name,
        policy=str(getattr(policy, "name", type(policy).__name__)),
        seed=seed,
        workers=n_slots,
        episodes=records,
        wall_time_s=time.perf_counter() - t_start,
        env_steps=env_steps,
        predict_latencies_s=latencies,
    )
    if json_path is not None:
        result.write_json(json_path)
    return result


def _scalar(values: np.ndarray | None, i: int, cast: type) -> Any:
    if values is None:
        return None
    v = cast(np.asarray(values).reshape(-1)[i])
    return None if isinstance(v, float) and math.isnan(v) else v


def _take_chunks(
    pred: ChunkPrediction, rows: list[int], slots: list[_Slot], latencies: list[float]
) -> None:
    """Queue each planned row's actions and record what the policy reported for its chunk."""
    actions = np.asarray(pred.actions)
    if actions.ndim != 3 or actions.shape[0] != len(rows) or actions.shape[1] < 1:
        raise ValueError(
            f"predict_chunk returned actions of shape {actions.shape}, expected "
            f"({len(rows)}, Ta >= 1, action_dim)"
        )
    if not np.all(np.isfinite(actions)):
        raise ValueError("predict_chunk returned non-finite actions")
    latencies.append(float(pred.latency_s))
    for i, row in enumerate(rows):
        slot = slots[row]
        rec = slot.record
        assert rec is not None
        slot.queue.extend(actions[i])
        chunk = ChunkRecord(
            t=rec.length,
            energy=_scalar(pred.energy, i, float),
            steps=_scalar(pred.steps, i, int),
            grad_norm=_scalar(pred.grad_norm, i, float),
            latency_s=float(pred.latency_s),
            batch=len(rows),
        )
        rec.chunks.append(chunk)
        slot.energy, slot.steps = chunk.energy, chunk.steps
