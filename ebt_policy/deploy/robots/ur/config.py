"""The UR adapter's settings, read from a TOML file and validated before anything moves.

Every section and key is optional (the defaults are in the dataclasses below); an unknown
section or key, a wrong type, a non-finite number or a value out of its range refuses to start
with one line naming the file, the key and what was expected. Example ``ur.toml``::

    [robot]
    control_hz = 20.0        # the loop's rate: one policy / teleop action per period
    servo_hz = 125.0         # servoL set-points per second (the UR takes up to 500)
    lookahead_time = 0.1     # servoL smoothing, s, in [0.03, 0.2]
    gain = 300.0             # servoL proportional gain, in [100, 2000]
    watchdog_hz = 10.0       # RTDE watchdog: the arm stops if not kicked for 1 / watchdog_hz s
    stop_deceleration = 2.0  # m/s^2 of servoStop / stopL

    [action]                 # a 7-D delta action as in our robosuite tasks
    position_scale = 0.05    # m per step for an action of 1.0 (robosuite's OSC: 5 cm)
    rotation_scale = 0.5     # rad per step for an action of 1.0

    [limits]                 # in the robot's base frame, as the teach pendant shows it
    workspace_min = [-0.5, -0.6, 0.05]
    workspace_max = [0.5, -0.2, 0.5]
    max_speed = 0.25         # m/s of the TCP set-point
    max_angular_speed = 1.0  # rad/s

    [frame]                  # where the base sits in the policy's world frame
    base_position = [0.0, 0.0, 0.0]
    base_quat_xyzw = [0.0, 0.0, 0.0, 1.0]

    [gripper]
    kind = "robotiq"         # Robotiq over the URCap socket, or "none"
    port = 63352
    speed = 255              # 0..255
    force = 100              # 0..255
    stroke = 0.085           # m, opening when fully open (2F-85)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebt_policy.errors import ConfigError

__all__ = ["URConfig", "load_ur_config"]


def _num(lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> Any:
    """Field metadata: a finite number in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    return {"range": (lo, hi, open_lo)}


@dataclass
class RobotSection:
    control_hz: float = field(default=20.0, metadata=_num(0, 500, open_lo=True))
    servo_hz: float = field(default=125.0, metadata=_num(0, 500, open_lo=True))
    lookahead_time: float = field(default=0.1, metadata=_num(0.03, 0.2))
    gain: float = field(default=300.0, metadata=_num(100, 2000))
    watchdog_hz: float = field(default=10.0, metadata=_num(1, 500))
    stop_deceleration: float = field(default=2.0, metadata=_num(0, 20, open_lo=True))
    # an episode ends after this many seconds (None: only the operator or the loop ends it)
    max_episode_s: float | None = field(default=None, metadata=_num(0, None, open_lo=True))


@dataclass
class ActionSection:
    position_scale: float = field(default=0.05, metadata=_num(0, 0.2, open_lo=True))
    rotation_scale: float = field(default=0.5, metadata=_num(0, 1.0, open_lo=True))


@dataclass
class LimitsSection:
    workspace_min: list[float] = field(default_factory=lambda: [-0.5, -0.6, 0.05])
    workspace_max: list[float] = field(default_factory=lambda: [0.5, -0.2, 0.5])
    max_speed: float = field(default=0.25, metadata=_num(0, 1.0, open_lo=True))
    max_angular_speed: float = field(default=1.0, metadata=_num(0, 3.0, open_lo=True))


@dataclass
class FrameSection:
    base_position: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    base_quat_xyzw: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 1.0])


@dataclass
class GripperSection:
    kind: str = "robotiq"
    port: int = field(default=63352, metadata=_num(1, 65535))
    speed: int = field(default=255, metadata=_num(0, 255))
    force: int = field(default=100, metadata=_num(0, 255))
    # finger opening at position 0 (fully open), m: 0.085 for a 2F-85, 0.05 for a Hand-E
    stroke: float = field(default=0.085, metadata=_num(0, 0.3, open_lo=True))


@dataclass
class URConfig:
    """All sections; :func:`load_ur_config` builds and validates one from a file."""

    robot: RobotSection = field(default_factory=RobotSection)
    action: ActionSection = field(default_factory=ActionSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    frame: FrameSection = field(default_factory=FrameSection)
    gripper: GripperSection = field(default_factory=GripperSection)
    source: str = "<defaults>"  # where it was read from (error messages name it)

    def __post_init__(self) -> None:
        validate(self)


_LENGTHS = {"workspace_min": 3, "workspace_max": 3, "base_position": 3, "base_quat_xyzw": 4}
_KINDS = ("robotiq", "none")


def _check_value(where: str, f: dataclasses.Field, value: Any) -> Any:
    """The value of one key, checked against its field's type and range."""
    if f.name in _LENGTHS:
        n = _LENGTHS[f.name]
        ok = isinstance(value, list) and len(value) == n
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if not ok or not all(math.isfinite(v) for v in value):
            raise ConfigError(f"{where}: expected a list of {n} finite numbers, got {value!r}")
        return [float(v) for v in value]
    if f.name == "kind":
        if value not in _KINDS:
            raise ConfigError(f"{where}: expected one of {list(_KINDS)}, got {value!r}")
        return value
    if value is None and f.default is None:
        return None
    want_int = f.type in ("int", int)
    kinds = (int,) if want_int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(
            f"{where}: expected {'an integer' if want_int else 'a number'}, got {value!r}"
        )
    lo, hi, open_lo = f.metadata.get("range", (None, None, False))
    bad = not math.isfinite(value)
    bad = bad or (lo is not None and (value <= lo if open_lo else value < lo))
    bad = bad or (hi is not None and value > hi)
    if bad:
        left = "(" if open_lo else "["
        raise ConfigError(
            f"{where}: expected a finite number in {left}{lo}, "
            f"{'inf' if hi is None else hi}], got {value!r}"
        )
    return value if want_int else float(value)


def validate(cfg: URConfig) -> None:
    """ConfigError (one line naming the key) for any value out of its type or range, and for
    limits that contradict each other."""
    for section in dataclasses.fields(cfg):
        if section.name == "source":
            continue
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            where = f"{cfg.source}: [{section.name}] {f.name}"
            setattr(obj, f.name, _check_value(where, f, getattr(obj, f.name)))
    lo, hi = cfg.limits.workspace_min, cfg.limits.workspace_max
    if not all(a < b for a, b in zip(lo, hi, strict=True)):
        raise ConfigError(
            f"{cfg.source}: [limits] workspace_min must be below workspace_max "
            f"on every axis, got {lo} and {hi}"
        )
    norm = math.sqrt(sum(v * v for v in cfg.frame.base_quat_xyzw))
    if abs(norm - 1.0) > 1e-3:
        raise ConfigError(
            f"{cfg.source}: [frame] base_quat_xyzw: expected a unit quaternion "
            f"(xyzw), got norm {norm:.4g}"
        )
    if cfg.robot.servo_hz < cfg.robot.control_hz:
        raise ConfigError(
            f"{cfg.source}: [robot] servo_hz ({cfg.robot.servo_hz}) must be >= "
            f"control_hz ({cfg.robot.control_hz})"
        )
    if cfg.robot.watchdog_hz > cfg.robot.servo_hz / 2:
        raise ConfigError(
            f"{cfg.source}: [robot] watchdog_hz ({cfg.robot.watchdog_hz}) must be "
            f"at most half of servo_hz ({cfg.robot.servo_hz}): the servo thread "
            "kicks the watchdog once per set-point"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (3.10)
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_ur_config(path: str | Path | None) -> URConfig:
    """The config in ``path`` (None: all defaults), validated."""
    if path is None:
        return URConfig()
    path = Path(path)
    raw = _read_toml(path)
    sections = {f.name: f for f in dataclasses.fields(URConfig) if f.name != "source"}
    built: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in sections:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {sorted(sections)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, got {table!r}")
        cls = sections[name].default_factory  # type: ignore[misc]
        known = {f.name for f in dataclasses.fields(cls)}
        for key in table:
            if key not in known:
                raise ConfigError(f"{path}: [{name}] unknown key {key!r} (known: {sorted(known)})")
        built[name] = cls(**table)
    return URConfig(**built, source=str(path))
