"""`ebt-policy record`: teleoperate a robot (simulated or real) into an episode store."""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ebt_policy.errors import ConfigError, Interrupted

__all__ = ["RecordArgs", "main"]


@dataclass
class RecordArgs:
    """Record demonstrations by teleoperation into an episode store the trainer reads (reruns
    resume: they record the missing episodes)."""

    robot: str
    """sim:<task> (stepped once per action), tcp://HOST:PORT (`ebt-policy robot-server`),
    ur-rtde://HOST (a UR arm; see --config) or ur-fake:// (a fake UR controller)."""
    teleop: Literal["keyboard", "spacemouse", "replay"]
    """keyboard (this terminal), spacemouse (pyspacemouse) or replay (--replay-from)."""
    out: Path
    """Episode store (.zarr); an existing one written by `ebt-policy record` is resumed."""
    episodes: int | None = None
    """Episodes the store should hold at the end (default: 1; replay: the source's count)."""
    replay_from: Path | None = None
    """--teleop replay: the episode store whose actions are replayed, episode by episode."""
    seed: int = 0
    """Episode i resets a simulated scene with seed + i (a replay uses the source's seeds)."""
    config: Path | None = None
    """ur-rtde:// and ur-fake:// robots: the adapter's TOML file (limits, rates, frames)."""
    rate: float | None = None
    """Control rate in Hz (default: the robot's)."""
    max_steps: int | None = None
    """End each episode after this many steps (default: the robot's episode cap)."""
    images: bool = False
    """sim:<task>: also record the task's cameras."""
    render_size: int = 84
    speed: float = 0.5
    """keyboard / spacemouse: action magnitude of a full key press or deflection (of 1.0)."""
    key_hold: float = 0.3
    """keyboard: an axis keeps moving this long (s) after its last key event."""

    def __post_init__(self) -> None:
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if (self.teleop == "replay") != (self.replay_from is not None):
            raise ConfigError("--replay-from goes with --teleop replay, and only with it")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be > 0, got {self.rate}")
        if self.config is not None and not self.robot.startswith(("ur-rtde:", "ur-fake:")):
            raise ConfigError(
                f"--config is for ur-rtde:// and ur-fake:// robots, not {self.robot!r}"
            )


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def build_robot(args: RecordArgs) -> Any:
    """The robot ``--robot`` names; a simulated task steps in lockstep with the recorder."""
    kind, _, task = args.robot.partition(":")
    if kind == "sim" and task:
        from ebt_policy.record.lockstep import LockstepSim

        return LockstepSim(task, args.images, args.render_size)
    from ebt_policy.deploy.robots import make_robot

    return make_robot(args.robot, config=args.config) if args.config else make_robot(args.robot)


def build_teleop(args: RecordArgs, action_dim: int) -> Any:
    """The teleop device ``--teleop`` names."""
    from ebt_policy.record import teleop

    if args.teleop == "replay":
        assert args.replay_from is not None
        return teleop.ReplayTeleop(args.replay_from, action_dim)
    if args.teleop == "spacemouse":
        return teleop.SpaceMouseTeleop(action_dim, speed=args.speed)
    return teleop.KeyboardTeleop(action_dim, speed=args.speed, hold_s=args.key_hold)


def main(argv: list[str]) -> int:
    """Entry point of `ebt-policy record`."""
    from ebt_policy.cli import parse_flags
    from ebt_policy.record.session import record
    from ebt_policy.record.teleop import HELP, StdinKeys
    from ebt_policy.utils import default_mujoco_gl
    from ebt_policy.utils.paths import check_output_path

    args = parse_flags(RecordArgs, argv, "ebt-policy record")
    check_output_path(args.out, "store", "--out")
    if args.out.exists():  # refuse a store record cannot resume before anything starts
        from ebt_policy.datasets import EpisodeStore
        from ebt_policy.record.session import recording_meta

        with EpisodeStore.open(args.out, "r", check_values=False) as store:
            recording_meta(store)
    if args.images:
        default_mujoco_gl()
    robot = build_robot(args)
    if robot.spec.action_kind != "delta" and args.teleop != "replay":
        raise ConfigError(
            f"--teleop {args.teleop}: drives delta actions; {robot.spec.name} takes "
            "absolute targets (use --teleop replay)"
        )
    device = build_teleop(args, robot.spec.action_dim)
    episodes = args.episodes or getattr(device, "n_episodes", 1)
    lockstep = args.robot.startswith("sim:")
    print(f"recording {robot.spec.name} into {args.out} ({args.teleop}); {HELP}", file=sys.stderr)

    def report(index: int, steps: int, success: bool | None) -> None:
        verdict = {True: "success", False: "failure", None: "not judged"}[success]
        print(f"episode {index}: {steps} steps, {verdict}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _interrupt)
    # a replay needs no operator (and no stdin); every other device reads the episode keys
    keys = StdinKeys(device).running() if args.teleop != "replay" else contextlib.nullcontext()
    paced = not (lockstep and args.teleop == "replay")  # nobody to keep pace with
    try:
        with keys:
            summary = record(
                robot, device, str(args.out), episodes, args.seed, args.teleop,
                args.max_steps, paced, args.rate, report,
            )  # fmt: skip
    finally:
        device.close()
    print(
        f"recorded {summary.new_episodes} episodes ({summary.new_steps} steps) into "
        f"{args.out}; it holds {summary.n_episodes}"
    )
    return 0
