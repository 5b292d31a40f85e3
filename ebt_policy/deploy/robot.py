"""The robot interface the deploy loop drives: simulated in-process, remote, or hardware.

A :class:`Robot` is connected, streams observations (arrays plus a monotonic ``timestamp`` and a
``seq`` sequence number), accepts timestamped actions, and can always be told to stop safely.
``with robot:`` connects and, however the block ends (an exception, Ctrl-C), stops and
disconnects. What it accepts is described once by a :class:`RobotSpec`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["META_KEYS", "Observation", "Robot", "RobotSpec"]

# keys of an observation dict that are not policy inputs
META_KEYS = ("timestamp", "seq", "success", "done")

Observation = dict[str, Any]  # obs key -> array, plus the META_KEYS


@dataclass(frozen=True)
class RobotSpec:
    """What a robot accepts: action size, limits, kind, control rate, observation keys."""

    name: str
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float
    obs_keys: tuple[str, ...]
    # "delta": actions are velocities / increments (zero = stay); "absolute": targets
    action_kind: Literal["delta", "absolute"] = "absolute"
    max_episode_steps: int | None = None  # where an episode ends when the robot cannot tell
    # control periods from a frame's timestamp to the tick whose action first acts on the state
    # it shows: 0 for hardware (a frame is the state at its capture instant, so a chunk's first
    # action is meant for then, and is dropped after any latency); 1 for a stepped simulator,
    # which integrates a whole period at a tick and publishes the state it reached at once, a
    # period before the next action acts on it (the deploy loop's default action_offset)
    action_offset: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` float64 arrays of shape (action_dim,)."""
        return np.asarray(self.action_low, np.float64), np.asarray(self.action_high, np.float64)

    def stop_action(self, last: np.ndarray | None) -> np.ndarray:
        """The action that holds the robot still: zero for delta actions (clipped into the
        limits), the last target for absolute ones (the middle of the limits before any)."""
        low, high = self.bounds()
        if self.action_kind == "delta":
            return np.clip(np.zeros(self.action_dim), low, high)
        if last is not None:
            return np.asarray(last, np.float64).copy()
        return (low + high) / 2


class Robot(abc.ABC):
    """A robot (or simulator, or remote controller) the deploy loop can drive."""

    spec: RobotSpec

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection / start the controller; the first observation is ready after."""

    @abc.abstractmethod
    def observation(self) -> Observation:
        """The newest observation: obs arrays plus ``timestamp`` (monotonic s, when it was
        captured) and ``seq`` (increasing per frame); ``success`` / ``done`` where known."""

    @abc.abstractmethod
    def send(self, action: np.ndarray, at_time: float | None = None) -> None:
        """Queue ``action`` (action_dim,) to take effect at monotonic time ``at_time`` (None: now).
        The robot holds its last action until a newer one is due."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Safe stop: hold still (``spec.stop_action``) and ignore actions until
        :meth:`start_episode`. Must be safe to call at any time, repeatedly."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the robot (after a stop). Safe to call twice."""

    def dataset_metadata(self) -> dict[str, Any]:
        """Root metadata for an episode store recorded on this robot."""
        s = self.spec
        return {
            "robot": s.name,
            "control_hz": float(s.control_hz),
            "action_space": {
                "kind": s.action_kind,
                "low": list(s.action_low),
                "high": list(s.action_high),
            },
            "obs_keys": {"low_dim": [k for k in s.obs_keys if not k.endswith("_image")]},
        }

    def start_episode(self, seed: int | None = None) -> None:  # noqa: B027 (a default)
        """Begin an episode: a simulator resets its scene (``seed``); hardware clears its stop
        latch (the operator sets the scene up)."""

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.disconnect()
