"""Deployments become datasets: every tick of an episode is appended to an episode store.

Per tick the store gets the robot's observation keys, ``action`` (what was sent, after the safety
layer) and ``deploy_*`` keys: ``deploy_obs_time`` (capture time, monotonic s), ``deploy_tick``
(tick start), ``deploy_chunk`` (chunk id, -1 when held), ``deploy_latency`` and
``deploy_energy`` / ``deploy_steps`` of that chunk (0 when held or unknown; stores hold no NaN),
and ``deploy_events``, a bitmask over :data:`EVENT_BITS`. The store's metadata names the robot
and the bits, so ``ebt-policy dataset info`` reads it and training can use it. The store is
reached through its public API only, imported when the first episode is written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ebt_policy.deploy.loop import StepLog
from ebt_policy.deploy.robot import Observation

__all__ = ["EVENT_BITS", "EpisodeRecorder"]

EVENT_BITS = (
    "clipped",
    "step_capped",
    "nonfinite",
    "shape",
    "faulted",
    "over_budget",
    "dropped_late",
    "hold_obs",
    "hold_watchdog",
    "stale",
    "out_of_order",
    "plan_nonfinite",
    "plan_error",
    "accel_capped",
    "energy_replan",
    "energy_scaled",
)  # fmt: skip (append only: a bit keeps its meaning in stores already recorded)


def _bits(events: list[str]) -> int:
    names = {e.partition(":")[0] for e in events}
    return sum(1 << i for i, name in enumerate(EVENT_BITS) if name in names)


class EpisodeRecorder:
    """Buffers one episode's ticks (``on_step``) and appends them at :meth:`end_episode`.

    Args:
        path: the episode store (created with ``metadata`` if it does not exist, else appended).
        metadata: root metadata for a new store (task, control rate, action space, ...).
        obs_keys: observation keys to record.
    """

    def __init__(
        self, path: str | os.PathLike, metadata: dict[str, Any], obs_keys: list[str]
    ) -> None:
        self.path = os.fspath(path)
        self.metadata = {**metadata, "deploy": {"event_bits": list(EVENT_BITS)}}
        self.obs_keys = list(obs_keys)
        self._rows: list[dict[str, Any]] = []
        self.n_written = 0

    def on_step(self, log: StepLog, obs: Observation) -> None:
        """Keep one tick (the loop's ``on_step`` hook)."""
        row = {k: np.array(obs[k]) for k in self.obs_keys}
        row.update(
            action=np.asarray(log.action, np.float32),
            deploy_obs_time=np.float64(log.obs_timestamp),
            deploy_tick=np.float64(log.tick),
            deploy_chunk=np.int64(log.chunk),
            deploy_latency=np.float32(log.latency_s or 0.0),
            deploy_energy=np.float32(log.energy if log.energy is not None else 0.0),
            deploy_steps=np.int64(log.steps or 0),
            deploy_events=np.int64(_bits(log.events)),
        )
        self._rows.append(row)

    def end_episode(self) -> int | None:
        """Append the buffered ticks as one episode; its index (None if there were none)."""
        rows, self._rows = self._rows, []
        if not rows:
            return None
        from ebt_policy.datasets import EpisodeStore

        episode = {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # key -> (T, ...)
        if os.path.exists(self.path):
            store = EpisodeStore.open(self.path, "a")
        else:
            store = EpisodeStore.create(self.path, self.metadata)
        with store:
            index = store.add_episode(episode)
        self.n_written += 1
        return index
