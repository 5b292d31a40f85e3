"""What collection and evaluation return: per-episode records and run summaries (plain data)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebt_policy.utils import write_json_atomic

if TYPE_CHECKING:  # collection workers import this module: keep torch (via policies) out of it
    from ebt_policy.rollout import ChunkRecord

__all__ = ["CollectSummary", "EpisodeAttempt", "EpisodeRecord", "EvalResult"]


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
    """What one :func:`~ebt_policy.envs.collect.collect` call did (``attempts`` etc. count this
    call only)."""

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
    truncated: bool  # truncated by the env's episode cap or by EvalConfig.max_episode_steps
    chunks: list[ChunkRecord] = field(default_factory=list)
    video: str | None = None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class EvalResult:
    """Outcome of :func:`~ebt_policy.envs.runner.evaluate`: rates, per-episode records and
    aggregates."""

    task: str
    policy: str
    seed: int
    workers: int
    episodes: list[EpisodeRecord]
    wall_time_s: float
    env_steps: int
    predict_latencies_s: list[float]  # one per predict_chunk call
    # how an EBT policy's engine planned: its options and the path of its last call
    planner: dict[str, Any] | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_coverage(self) -> float | None:
        return _mean([e.coverage for e in self.episodes if e.coverage is not None])

    def aggregates(self) -> dict[str, Any]:
        """Summary numbers over all episodes and chunks (None where the policy reports nothing)."""
        chunks = [c for e in self.episodes for c in e.chunks]
        energies = [c.energy for c in chunks if c.energy is not None]
        steps = [c.steps for c in chunks if c.steps is not None]
        lat = self.predict_latencies_s
        return {
            "success_rate": self.success_rate,
            "n_success": int(sum(e.success for e in self.episodes)),
            "n_episodes": self.n_episodes,
            "mean_coverage": self.mean_coverage,
            "mean_length": _mean([e.length for e in self.episodes]),
            "n_chunks": len(chunks),
            "mean_descent_steps": _mean(steps),
            "max_descent_steps": int(max(steps)) if steps else None,
            "latency_p50_ms": None if not lat else 1e3 * _percentile(lat, 50),
            "latency_p99_ms": None if not lat else 1e3 * _percentile(lat, 99),
            "energy_min": float(min(energies)) if energies else None,
            "energy_max": float(max(energies)) if energies else None,
            "energy_mean": _mean(energies),
            "grad_norm_mean": _mean([c.grad_norm for c in chunks if c.grad_norm is not None]),
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
            "planner": self.planner,
            **self.aggregates(),
            "episodes": [asdict(e) for e in self.episodes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The result as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` as JSON, atomically."""
        return write_json_atomic(path, self.to_dict())
