"""Recording demonstrations: teleoperate a robot at its control rate into an episode store.

Per tick: read the newest observation, ask the :class:`~ebt_policy.record.teleop.Teleop` for a
command, keep ``(observation, action)`` and send the action. An episode ends when the robot says
``done`` (a simulated task's success or episode cap, a UR fault), after ``max_steps``, when a
replay runs out of actions, or when the operator ends it (success, failure, or discard: recorded
again). Success is the task's own check where the robot has one (simulation), else the
operator's key; None when neither said.

Store, crash safety and resume: every kept episode is appended atomically
(``EpisodeStore.add_episode``) and then listed in the store's ``recording`` metadata
(``episode_success``, ``episode_seeds``, ``teleop``). The entry is written as ``pending`` just
before the append, so a run killed between the two is recognised: a rerun with the same ``out``
adopts it (or drops it, if the append never happened) and records the missing episodes up to
``episodes``. Normalisation statistics are written at the end, as `ebt-policy collect` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebt_policy.deploy.robot import META_KEYS, Robot
from ebt_policy.deploy.timing import Rate
from ebt_policy.errors import DatasetError, EbtPolicyError
from ebt_policy.record.teleop import Teleop

__all__ = ["RecordError", "RecordSummary", "open_recording", "record"]

log = logging.getLogger("ebt_policy.record")
# metadata a resumed recording must share with the store (robot, task, rate, actions)
MATCH_KEYS = ("robot", "task", "control_hz", "action_space", "obs_keys")


class RecordError(EbtPolicyError, RuntimeError):
    """An episode could not be recorded (it ended before its first action)."""


@dataclass
class RecordSummary:
    """What one `record` call did."""

    out: str
    n_episodes: int  # in the store at the end
    new_episodes: int
    new_steps: int
    discarded: int
    success: list[bool | None] = field(default_factory=list)  # of this call's episodes
    stopped: bool = False  # Ctrl-C ended the call early


def recording_meta(store: Any) -> dict[str, Any]:
    """The store's ``recording`` metadata; DatasetError when `ebt-policy record` did not write
    the store."""
    rec = store.metadata.get("recording")
    if not isinstance(rec, Mapping) or "episode_success" not in rec:
        raise DatasetError(
            f"{store.path}: exists but has no 'recording' metadata (not written "
            "by `ebt-policy record`); choose a new --out"
        )
    return dict(rec)


def open_recording(out: str, metadata: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """Open ``out`` to resume (checking it was recorded on the same robot) or create it with
    ``metadata``; returns the store and its ``recording`` metadata, a pending entry resolved."""
    from ebt_policy.datasets import EpisodeStore

    if not os.path.exists(out):
        rec = {"seed": int(seed), "episode_success": [], "episode_seeds": [], "teleop": []}
        return EpisodeStore.create(out, {**metadata, "recording": rec}), rec
    store = EpisodeStore.open(out, "a", check_values=False)
    rec = recording_meta(store)
    for key in MATCH_KEYS:
        have, want = store.metadata.get(key), metadata.get(key)
        if have != want:
            store.close()
            raise DatasetError(
                f"{out}: {key} is {have!r} but this robot has {want!r}; record into a new --out"
            )
    listed = len(rec["episode_success"])
    pending = rec.pop("pending", None)
    if store.n_episodes == listed + 1 and pending and pending.get("index") == listed:
        for name in ("episode_success", "episode_seeds", "teleop"):  # killed after the append
            rec[name] = [*rec[name], pending[name]]
    elif store.n_episodes != listed:
        store.close()
        raise DatasetError(
            f"{out}: holds {store.n_episodes} episodes but recording lists "
            f"{listed}; the store was modified outside `ebt-policy record`"
        )
    store.update_metadata(recording=rec)
    return store, rec


def _commit(
    store: Any, rec: dict[str, Any], rows: list[dict[str, np.ndarray]], entry: dict[str, Any]
) -> None:
    """Append one episode, announced as pending first (see the module docstring)."""
    index = len(rec["episode_success"])
    store.update_metadata(recording={**rec, "pending": {"index": index, **entry}})
    store.add_episode({k: np.stack([r[k] for r in rows]) for k in rows[0]})  # key -> (T, ...)
    for name, value in entry.items():
        rec[name] = [*rec[name], value]
    store.update_metadata(recording=rec)


def _episode(
    robot: Robot,
    teleop: Teleop,
    seed: int | None,
    max_steps: int | None,
    paced: bool,
    rate_hz: float,
) -> tuple[list[dict[str, np.ndarray]], str | None, bool | None]:
    """Play one episode; (rows, how the operator ended it, success)."""
    robot.start_episode(seed)
    rows: list[dict[str, np.ndarray]] = []
    end: str | None = None
    judged = False  # the robot reports its own success (a simulated task)
    success = False
    rate = Rate(rate_hz) if paced else None
    try:
        while max_steps is None or len(rows) < max_steps:
            if rate is not None:
                rate.sleep()
            obs = robot.observation()
            if "success" in obs:
                judged = True
                success = success or bool(obs["success"])
            if obs.get("done"):
                break
            cmd = teleop.command(obs)
            if cmd.end is not None:
                end = cmd.end
                break
            if cmd.action is None:
                break
            row = {k: np.asarray(v) for k, v in obs.items() if k not in META_KEYS}
            row["action"] = np.asarray(cmd.action, np.float32)
            rows.append(row)
            robot.send(cmd.action)
    finally:
        robot.stop()
    if judged:
        return rows, end, success
    return rows, end, {"success": True, "failure": False}.get(end or "")


def record(
    robot: Robot,
    teleop: Teleop,
    out: str,
    episodes: int,
    seed: int = 0,
    teleop_name: str = "",
    max_steps: int | None = None,
    paced: bool = True,
    rate_hz: float | None = None,
    on_episode: Callable[[int, int, bool | None], None] | None = None,
) -> RecordSummary:
    """Record until ``out`` holds ``episodes`` episodes (see the module docstring).

    ``robot`` is connected here. Episode ``i`` resets a simulated scene with the teleop's seed
    for it (a replay of a collected store) or ``seed + i``. ``paced``: tick at ``rate_hz``
    (default: the robot's rate) in real time; off only for a replay into a lockstep simulator.
    ``on_episode(index, steps, success)`` after each kept episode.
    """
    from ebt_policy.datasets import compute_stats

    summary = RecordSummary(out, 0, 0, 0, 0)
    hz = float(rate_hz or robot.spec.control_hz)
    steps_cap = max_steps or robot.spec.max_episode_steps
    with robot:
        store, rec = open_recording(out, robot.dataset_metadata(), seed)
        try:
            while store.n_episodes < episodes:
                index = store.n_episodes
                ep_seed = teleop.start_episode(index)
                ep_seed = int(rec["seed"]) + index if ep_seed is None else int(ep_seed)
                try:
                    rows, end, success = _episode(robot, teleop, ep_seed, steps_cap, paced, hz)
                except KeyboardInterrupt:
                    summary.stopped = True
                    log.warning("stopped: the unfinished episode %d is not kept", index)
                    raise
                if end == "discard":
                    summary.discarded += 1
                    continue
                if not rows:  # recording it again would end the same way
                    raise RecordError(
                        f"episode {index} ended before its first action (the "
                        "robot said done, or the replayed episode is empty)"
                    )
                entry = {
                    "episode_success": success,
                    "episode_seeds": ep_seed,
                    "teleop": teleop_name,
                }
                _commit(store, rec, rows, entry)
                summary.new_episodes += 1
                summary.new_steps += len(rows)
                summary.success.append(success)
                if on_episode is not None:
                    on_episode(index, len(rows), success)
        finally:
            if summary.new_episodes or (store.n_episodes and "stats" not in store.metadata):
                compute_stats(store, write=True)
            summary.n_episodes = store.n_episodes
            store.close()
    return summary
