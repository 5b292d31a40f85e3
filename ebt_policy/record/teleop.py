"""Teleoperation devices: each control tick a :class:`Teleop` turns the newest observation into a
:class:`Command` (the action to send, and whether the operator ended the episode).

- :class:`KeyboardTeleop`: keys pressed in a terminal (no display needed). Keys move along one
  axis while they keep coming (a held key repeats) and for ``hold_s`` after the last one:
  ``w``/``s`` +x/-x, ``a``/``d`` +y/-y, ``e``/``q`` up/down, ``i``/``k``, ``j``/``l``,
  ``u``/``o`` rotate about x, y, z; space toggles the gripper. Its :meth:`~OperatorKeys.press`
  takes key events from :class:`StdinKeys` (stdin in cbreak mode) or from a test.
- :class:`SpaceMouseTeleop`: a 3Dconnexion SpaceMouse through ``pyspacemouse`` (imported when
  used); its left button closes the gripper, the right one opens it.
- :class:`ReplayTeleop`: the actions of a recorded episode store, episode by episode.

Every device shares the operator's episode keys (:class:`OperatorKeys`): Enter ends the episode
as a success, ``n`` as a failure, Backspace discards it (it is recorded again). Ctrl-C stops
recording; the unfinished episode is not kept.
"""

from __future__ import annotations

import abc
import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ebt_policy.errors import ConfigError, DatasetError

__all__ = [
    "Command",
    "KeyboardTeleop",
    "OperatorKeys",
    "ReplayTeleop",
    "SpaceMouseTeleop",
    "StdinKeys",
    "Teleop",
]

END_KEYS = {"\n": "success", "\r": "success", "n": "failure", "\x7f": "discard", "\b": "discard"}
MOTION_KEYS = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "e": (2, 1.0), "q": (2, -1.0),
    "i": (3, 1.0), "k": (3, -1.0), "j": (4, 1.0), "l": (4, -1.0), "u": (5, 1.0), "o": (5, -1.0),
}  # fmt: skip
HELP = (
    "keys: w/s a/d e/q move x/y/z, i/k j/l u/o rotate, space gripper; Enter success, "
    "n failure, Backspace discard, Ctrl-C stop"
)


@dataclass
class Command:
    """What the operator wants this tick. ``action`` None: the device has nothing more (a replay
    ran out); ``end``: "success", "failure" or "discard" when the operator ended the episode."""

    action: np.ndarray | None
    end: str | None = None


class Teleop(abc.ABC):
    """A teleoperation device for a robot with ``action_dim`` delta actions."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = int(action_dim)

    def start_episode(self, episode: int) -> int | None:
        """Get ready for episode ``episode``; a seed the scene must use, or None."""
        return None

    @abc.abstractmethod
    def command(self, obs: dict[str, Any]) -> Command:
        """This tick's command from the newest observation."""

    def close(self) -> None:  # noqa: B027 (a default)
        """Release the device."""

    def _layout(self, motion: np.ndarray, gripper: float) -> np.ndarray:
        """Our 7-D delta pose (6 motion axes + gripper) cut to the robot's action size: a 7-D
        robot gets all of it, a smaller one the first motion axes."""
        if self.action_dim >= 7:
            return np.array([*motion[:6], gripper, *[0.0] * (self.action_dim - 7)], np.float32)
        return motion[: self.action_dim].astype(np.float32)


class OperatorKeys(Teleop):
    """The episode keys (see the module docstring); subclasses add motion."""

    def __init__(self, action_dim: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(action_dim)
        self.clock = clock
        self._lock = threading.Lock()
        self._end: str | None = None

    def start_episode(self, episode: int) -> int | None:
        with self._lock:
            self._end = None
        return None

    def press(self, key: str) -> None:
        """One key event (from the terminal, or a test)."""
        with self._lock:
            if key in END_KEYS:
                self._end = END_KEYS[key]
            else:
                self._on_key(key, self.clock())

    def _on_key(self, key: str, now: float) -> None:  # noqa: B027 (no motion keys here)
        """A key that is not an episode key (caller holds the lock)."""

    def _take_end(self) -> str | None:
        with self._lock:
            end, self._end = self._end, None
            return end


class KeyboardTeleop(OperatorKeys):
    """Delta actions from key presses (see the module docstring).

    Args:
        action_dim: the robot's action size (7: pose + gripper; 2: x/y only, like twogoal).
        speed: action magnitude of a pressed axis, in the robot's action units (1.0 = full).
        hold_s: an axis keeps moving this long after its last key event (bridges the terminal's
            key-repeat delay; a released key stops within this time).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        action_dim: int = 7,
        speed: float = 0.5,
        hold_s: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(action_dim, clock)
        if not 0 < speed <= 1 or not hold_s > 0:
            raise ConfigError(
                f"keyboard teleop: need 0 < speed <= 1 and hold_s > 0, got {speed}, {hold_s}"
            )
        self.speed, self.hold_s = float(speed), float(hold_s)
        self._held: dict[int, tuple[float, float]] = {}  # axis -> (sign, time of last event)
        self._gripper_closed = False

    def start_episode(self, episode: int) -> int | None:
        with self._lock:
            self._held.clear()
            self._gripper_closed = False
        return super().start_episode(episode)

    def _on_key(self, key: str, now: float) -> None:
        if key == " ":
            self._gripper_closed = not self._gripper_closed
        elif key in MOTION_KEYS:
            axis, sign = MOTION_KEYS[key]
            self._held[axis] = (sign, now)

    def command(self, obs: dict[str, Any]) -> Command:
        now = self.clock()
        motion = np.zeros(6)
        with self._lock:
            for axis, (sign, t) in self._held.items():
                if now - t <= self.hold_s:
                    motion[axis] = sign * self.speed
            gripper = 1.0 if self._gripper_closed else -1.0
        return Command(self._layout(motion, gripper), self._take_end())


class StdinKeys:
    """Feeds key presses from a stream (the terminal, in cbreak mode: keys arrive as typed, no
    Enter needed, Ctrl-C still interrupts) to ``keys.press`` on a background thread. A stream
    that is not a terminal (a pipe) is read as it is."""

    def __init__(self, keys: OperatorKeys, stream: TextIO | None = None) -> None:
        self.keys = keys
        self.stream = stream if stream is not None else sys.stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Read keys while inside the block; the terminal's mode is restored on exit."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            raise ConfigError(
                "keyboard keys: stdin is not readable (run in a terminal, or pipe the keys in)"
            ) from None
        saved = None
        if os.isatty(fd):
            import termios
            import tty

            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(timeout=1.0)  # wakes within select's 0.1 s
            if saved is not None:
                import termios

                termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.1)
                data = os.read(fd, 64) if ready else None
            except OSError:  # the stream was closed under us
                return
            if data is None:
                continue
            if not data:
                return  # end of input
            for ch in data.decode("utf-8", "replace"):
                self.keys.press(ch)


class SpaceMouseTeleop(OperatorKeys):
    """Delta actions from a SpaceMouse (``pyspacemouse``); the episode keys from the terminal.

    Args:
        speed: action magnitude at full deflection.
        deadzone: deflections below this (of 1.0) read as zero.
    """

    def __init__(self, action_dim: int = 7, speed: float = 1.0, deadzone: float = 0.05) -> None:
        super().__init__(action_dim)
        try:
            import pyspacemouse
        except ImportError:
            raise ConfigError(
                "--teleop spacemouse: needs the pyspacemouse package (pip install pyspacemouse; "
                "on Linux also libhidapi and read access to /dev/hidraw*)"
            ) from None
        if not pyspacemouse.open():
            raise ConfigError(
                "--teleop spacemouse: no SpaceMouse found (is it plugged in, and "
                "readable by this user?)"
            )
        self._device = pyspacemouse
        self.speed, self.deadzone = float(speed), float(deadzone)
        self._gripper = -1.0

    def command(self, obs: dict[str, Any]) -> Command:
        state = self._device.read()
        raw = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], float)
        motion = np.where(np.abs(raw) < self.deadzone, 0.0, np.clip(raw, -1, 1)) * self.speed
        buttons = list(getattr(state, "buttons", getattr(state, "button", [])))
        if buttons[:1] == [1]:
            self._gripper = 1.0
        elif buttons[1:2] == [1]:
            self._gripper = -1.0
        return Command(self._layout(motion, self._gripper), self._take_end())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._device.close()


class ReplayTeleop(OperatorKeys):
    """Replays the actions of episode store ``path``: episode ``i`` of the recording gets episode
    ``i`` of the store, and the env seed that episode was played with when the store says it
    (``collection.kept_seeds`` of `ebt-policy collect`, ``recording.episode_seeds`` of
    `ebt-policy record`)."""

    def __init__(self, path: str | Path, action_dim: int) -> None:
        super().__init__(action_dim)
        from ebt_policy.datasets import EpisodeStore

        self.path = str(path)
        self._store = EpisodeStore.open(self.path, "r")
        shape = self._store.key_shape("action") if "action" in self._store.keys else None
        if shape != (self.action_dim,):
            raise DatasetError(
                f"--replay-from {path}: actions of shape {shape}, the robot takes "
                f"({self.action_dim},)"
            )
        meta = self._store.metadata
        seeds = (meta.get("collection") or {}).get("kept_seeds")
        seeds = seeds if seeds is not None else (meta.get("recording") or {}).get("episode_seeds")
        self.seeds: list[int | None] = list(seeds) if seeds else []
        self._actions = np.zeros((0, self.action_dim), np.float32)
        self._next = 0

    @property
    def n_episodes(self) -> int:
        """Episodes in the store."""
        return self._store.n_episodes

    def start_episode(self, episode: int) -> int | None:
        super().start_episode(episode)
        if episode >= self.n_episodes:
            raise DatasetError(
                f"--replay-from {self.path}: has {self.n_episodes} episodes, "
                f"episode {episode} was asked for"
            )
        self._actions = self._store.get_episode(episode, ["action"])["action"]
        self._next = 0
        return self.seeds[episode] if episode < len(self.seeds) else None

    def command(self, obs: dict[str, Any]) -> Command:
        end = self._take_end()
        if self._next >= len(self._actions):
            return Command(None, end)
        action = self._actions[self._next]
        self._next += 1
        return Command(np.asarray(action, np.float32), end)

    def close(self) -> None:
        self._store.close()
