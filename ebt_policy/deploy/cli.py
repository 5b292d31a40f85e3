"""`ebt-policy deploy`: run a trained policy on a robot in real time, with the safety layer.

Exit status: 0 every episode ran without a fault; 3 a safety fault stopped the robot (the
summary names it; later episodes are not run); otherwise as every ``ebt-policy`` command.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import ConfigError, Interrupted

__all__ = ["FAULT_EXIT", "DeployArgs", "ServerArgs", "main", "server_main"]

FAULT_EXIT = 3  # a safety fault stopped the robot (not a user error, not a bug)
COMPILE_TIMEOUT_S = 1800.0  # --compile: the warm-up plan compiles (paper size: minutes)


@dataclass
class DeployArgs:
    """Run a trained policy on a robot in real time (a simulated one: --robot sim:<task>)."""

    checkpoint: Path
    """Run or checkpoint directory."""
    robot: str
    """sim:<task> (a registered task stepping in real time in this process), tcp://HOST:PORT
    (a robot served by `ebt-policy robot-server`; its token from EBT_ROBOT_TOKEN), ur-rtde://HOST
    (a UR arm) or ur-fake:// (a fake UR controller)."""
    config: Path | None = None
    """ur-rtde:// and ur-fake:// robots: the adapter's TOML file (limits, rates, frames)."""
    episodes: int = 1
    seed: int = 100_000
    """Episode i resets a simulated scene with seed + i."""
    rate: float | None = None
    """Control rate in Hz (default: the robot's)."""
    duration: float | None = None
    """Stop each episode after this many seconds (default: the robot's episode cap)."""
    record: Path | None = None
    """Append every episode (each tick: observation, action sent, chunk, latency, energy, safety
    events) to this episode store (created if missing)."""
    log: Path | None = None
    """Write every tick as one JSON line here."""
    max_step_change: float | None = 0.5
    """Safety: most change of any action component per control step (action units)."""
    max_obs_age: float = 0.2
    """Safety: an observation older than this (s) is stale; 5 in a row stop the robot."""
    max_nonfinite: int = 3
    """Safety: this many NaN/Inf chunks in a row stop the robot."""
    max_step_accel: float | None = None
    """Safety: most change of the per-step change (an acceleration limit; default: off)."""
    energy_scale: float | None = None
    """Energy above this: execute the chunk with half-size steps (default: off)."""
    energy_replan: float | None = None
    """Energy above this: hold and plan again (with --energy-replan-steps descent steps)."""
    energy_replan_steps: int | None = None
    energy_stop: float | None = None
    """Energy above this: stop the robot and wait for the operator (default: off)."""
    energy_scale_quantile: float | None = None
    """As --energy-scale, the threshold given as a quantile in (0, 1] of the held-out
    demonstration energies in the checkpoint's calibration.json (`ebt-policy calibrate`)."""
    energy_replan_quantile: float | None = None
    """As --energy-replan, as a calibrated quantile."""
    energy_stop_quantile: float | None = None
    """As --energy-stop, as a calibrated quantile (e.g. 0.99)."""
    energy_score: str = "energy"
    """What the --energy-* thresholds apply to: energy, or spread (the best-of-K candidates'
    disagreement; needs --best-of >= 2, quantiles need `ebt-policy calibrate --best-of K`), or
    novelty (how unlike every training observation the robot's is, in [0, 1]; any policy, needs
    `ebt-policy calibrate --novelty`)."""
    warm_start: bool = False
    """EBT: start each plan's descent from the previous chunk shifted by the control steps
    since its newest frame (noise at an episode's start and for an energy re-plan)."""
    best_of: int = 1
    """EBT: descend from K initialisations per plan, keep the lowest final energy."""
    compile: bool = False
    """EBT: torch.compile the planner (a fixed-step chunk as one graph); the compile happens in
    the warm-up plan before the first episode (seconds to minutes: the warm-up waits for it)."""
    cpp_wrapper: bool = False
    """EBT, with --compile: launch the compiled chunk from C++ (faster small models, a longer
    first compile)."""
    action_offset: float | None = None
    """Action i of a chunk is due (i + this) control periods after its observation's capture
    time; actions whose time has passed when the chunk is ready are dropped. Default: the
    robot's: 0 for hardware (as Diffusion Policy's real-robot loop: the first action is meant for
    the capture instant, so after any latency it is dropped), 1 for sim:<task> (a stepped
    simulator publishes the state the next tick's action acts on, as `eval` steps it)."""
    obs_latency: float = 0.0
    """Simulated robots: delay every observation by this many seconds."""
    drop_prob: float = 0.0
    """Simulated robots: lose each frame with this probability."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.best_of < 1:
            raise ConfigError(f"--best-of must be >= 1, got {self.best_of}")
        if self.energy_score not in ("energy", "spread", "novelty"):
            raise ConfigError(
                f"--energy-score: expected energy, spread or novelty, got {self.energy_score!r}"
            )
        if self.energy_score == "spread" and self.best_of < 2:
            raise ConfigError("--energy-score spread: needs --best-of K with K >= 2")
        if self.cpp_wrapper and not self.compile:
            raise ConfigError("--cpp-wrapper: needs --compile")
        if self.action_offset is not None and not (
            np.isfinite(self.action_offset) and self.action_offset >= 0
        ):
            raise ConfigError(f"--action-offset must be >= 0, got {self.action_offset}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration must be > 0, got {self.duration}")
        for name in ("scale", "replan", "stop"):
            if None not in (
                getattr(self, f"energy_{name}"),
                getattr(self, f"energy_{name}_quantile"),
            ):
                raise ConfigError(
                    f"--energy-{name} and --energy-{name}-quantile: give one threshold, not both"
                )


def _energy_thresholds(policy: Any, args: DeployArgs) -> dict[str, float | None]:
    """``scale_above`` / ``replan_above`` / ``stop_above`` from the energy flags, quantile
    flags converted through the policy's calibration."""
    from ebt_policy.deploy.energy import energy_at_quantile

    out = {}
    for name in ("scale", "replan", "stop"):
        value, q = getattr(args, f"energy_{name}"), getattr(args, f"energy_{name}_quantile")
        if q is not None:
            flag = f"--energy-{name}-quantile"
            value = energy_at_quantile(policy, q, flag, args.energy_score)  # type: ignore[arg-type]
        out[f"{name}_above"] = value
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)  # SIGTERM stops like Ctrl-C: the loop's finally stops the robot


def _env_kwargs(checkpoint: Path, task: str) -> dict[str, Any]:
    """The env kwargs the policy was trained with (cameras, render size), if its data was
    recorded on the same task."""
    from ebt_policy.policies.checkpoint import read_checkpoint_config

    meta = read_checkpoint_config(checkpoint).get("dataset_metadata") or {}
    task_meta = meta.get("task") if isinstance(meta, dict) else None
    if isinstance(task_meta, dict) and task_meta.get("name") == task:
        return dict(task_meta.get("env_kwargs") or {})
    return {}


def _summary_table(reports: list[Any], rate_hz: float) -> Any:
    from rich.table import Table

    table = Table(title=f"deploy ({rate_hz:g} Hz)")
    for col in ("episode", "steps", "success", "fault", "latency p50/p99 ms", "jitter p99 ms"):
        table.add_column(col)
    for r in reports:
        lat = np.asarray(r.latencies_s) * 1e3
        jitter = np.abs(r.periods() - 1 / rate_hz) * 1e3
        table.add_row(
            str(r.episode),
            str(r.steps),
            "-" if r.success is None else ("yes" if r.success else "no"),
            r.fault or "-",
            f"{np.median(lat):.1f} / {np.quantile(lat, 0.99):.1f}" if lat.size else "-",
            f"{np.quantile(jitter, 0.99):.2f}" if jitter.size else "-",
        )
    events = sum((r.events for r in reports), start=type(reports[0].events)())
    table.caption = "events: " + (
        ", ".join(f"{k} {v}" for k, v in sorted(events.items())) or "none"
    )
    return table


def _check_obs_keys(policy: Any, robot: Any, args: DeployArgs) -> None:
    """ConfigError when the robot lacks an observation the policy reads."""
    wanted = list(getattr(policy, "shape_meta", {}).get("obs", {}))
    missing = [k for k in wanted if k not in robot.spec.obs_keys]
    if missing:
        raise ConfigError(
            f"--robot {args.robot}: has no observation {missing[0]!r} that {args.checkpoint} "
            f"reads (robot keys: {list(robot.spec.obs_keys)})"
        )


def _ur_kwargs(robot: str, config: Path | None) -> dict[str, Any]:
    """``config=`` for a UR robot; ConfigError for --config with any other robot."""
    if config is None:
        return {}
    if not robot.startswith(("ur-rtde:", "ur-fake:")):
        raise ConfigError(f"--config is for ur-rtde:// and ur-fake:// robots, not {robot!r}")
    return {"config": config}


def _jsonl_row(log: Any) -> str:
    row = {k: getattr(log, k) for k in log.__dataclass_fields__}
    row["action"] = [float(x) for x in log.action]
    return json.dumps(row)


def main(argv: list[str]) -> int:
    """Entry point of `ebt-policy deploy`."""
    from rich.console import Console

    from ebt_policy.cli import parse_flags
    from ebt_policy.utils import default_mujoco_gl, resolve_device
    from ebt_policy.utils.paths import check_output_path

    args = parse_flags(DeployArgs, argv, "ebt-policy deploy")
    # everything that can be refused is refused before the policy loads and the robot moves
    device = resolve_device(args.device)
    check_output_path(args.record, "store", "--record")
    check_output_path(args.log, "file", "--log")
    default_mujoco_gl()
    from ebt_policy import load_policy
    from ebt_policy.deploy.energy import EnergyConfig
    from ebt_policy.deploy.loop import DeployLoop, LoopConfig
    from ebt_policy.deploy.robots import make_robot
    from ebt_policy.deploy.safety import SafetyConfig

    kind, _, task = args.robot.partition(":")
    kwargs: dict[str, Any] = {}
    if kind == "sim":
        kwargs = dict(
            control_hz=args.rate, obs_latency_s=args.obs_latency, drop_prob=args.drop_prob
        )
        kwargs["env_kwargs"] = _env_kwargs(args.checkpoint, task)
    kwargs.update(_ur_kwargs(args.robot, args.config))
    robot = make_robot(args.robot, **kwargs)
    policy = load_policy(args.checkpoint, device=device)
    # refused before the robot connects
    if args.warm_start or args.best_of != 1 or args.compile:
        if not hasattr(policy, "set_engine"):
            raise ConfigError(
                f"{args.checkpoint}: --warm-start/--best-of/--compile apply to EBT policies"
            )
        policy.set_engine(
            warm_start=args.warm_start, best_of=args.best_of, compile=args.compile,
            cpp_wrapper=args.cpp_wrapper,
        )  # fmt: skip
    if args.energy_score == "novelty" and policy.novelty is None:
        raise ConfigError(
            f"--energy-score novelty: {args.checkpoint} has no novelty.safetensors (run "
            "`ebt-policy calibrate --novelty` on it)"
        )
    energy = EnergyConfig(
        replan_steps=args.energy_replan_steps,
        statistic=args.energy_score,  # type: ignore[arg-type]
        **_energy_thresholds(policy, args),
    )
    status: dict[str, Any] = {"last": time.monotonic(), "ticks": 0, "latency": [], "events": 0}

    def on_step(log: Any, obs: Any) -> None:
        if recorder is not None:
            recorder.on_step(log, obs)
        if log_file is not None:
            log_file.write(_jsonl_row(log) + "\n")
        status["ticks"] += 1
        status["events"] += len(log.events)
        if log.latency_s is not None:
            status["latency"].append(log.latency_s * 1e3)
        if log.tick - status["last"] >= 1.0:  # a live status line, once a second
            rate = status["ticks"] / (log.tick - status["last"])
            lat = status["latency"][-200:]  # the recent chunks' planning latency
            lat_text = (
                f"{np.percentile(lat, 50):.1f}/{np.percentile(lat, 99):.1f} ms" if lat else "-"
            )
            energy = "-" if log.energy is None else f"{log.energy:.3g}"
            print(
                f"  step {log.step}  rate {rate:.1f} Hz  latency p50/p99 {lat_text}  "
                f"energy {energy}  events {status['events']} {log.events or ''}",
                file=sys.stderr,
            )
            status.update(last=log.tick, ticks=0)

    signal.signal(signal.SIGTERM, _interrupt)
    reports = []
    recorder = log_file = None
    try:
        with robot:  # a remote robot's spec is known once connected
            _check_obs_keys(policy, robot, args)
            rate_hz = float(args.rate or robot.spec.control_hz)
            config = LoopConfig(
                rate_hz=rate_hz,
                # a compiled planner compiles in the warm-up plan
                first_plan_timeout_s=(
                    COMPILE_TIMEOUT_S if args.compile else LoopConfig.first_plan_timeout_s
                ),
                max_steps=int(args.duration * rate_hz) if args.duration else None,
                action_offset=args.action_offset,
                energy=energy,
                safety=SafetyConfig(
                    max_step_accel=args.max_step_accel,
                    max_step_change=args.max_step_change,
                    max_obs_age_s=args.max_obs_age,
                    max_nonfinite=args.max_nonfinite,
                ),
            )
            if args.record is not None:
                from ebt_policy.deploy.record import EpisodeRecorder

                meta, keys = robot.dataset_metadata(), list(robot.spec.obs_keys)
                recorder = EpisodeRecorder(args.record, meta, keys)
            log_file = open(args.log, "w") if args.log is not None else None  # noqa: SIM115
            loop = DeployLoop(policy, robot, config, on_step)
            try:
                for ep in range(args.episodes):
                    report = loop.run_episode(ep, seed=args.seed + ep)
                    reports.append(report)
                    if recorder is not None:
                        recorder.end_episode()
                    if report.fault is not None:
                        why = f" ({report.fault_detail})" if report.fault_detail else ""
                        print(f"fault: {report.fault}{why}; robot stopped, later episodes not run")
                        break
            finally:
                loop.close()
                if recorder is not None:  # an interrupted episode is kept too, as far as it got
                    recorder.end_episode()
    finally:
        if log_file is not None:
            log_file.close()
    Console().print(_summary_table(reports, rate_hz))
    if recorder is not None:
        print(f"recorded {recorder.n_written} episodes into {args.record}")
    return 0 if all(r.fault is None for r in reports) else FAULT_EXIT


@dataclass
class ServerArgs:
    """Serve a robot over zmq for `ebt-policy deploy --robot tcp://HOST:PORT` (loopback by
    default). The server stops the robot when its client is silent past --client-timeout."""

    robot: str
    """sim:<task> (a registered task stepping in real time), ur-rtde://HOST or ur-fake://."""
    config: Path | None = None
    """ur-rtde:// and ur-fake:// robots: the adapter's TOML file."""
    bind: str = "tcp://127.0.0.1:5555"
    allow_remote: bool = False
    """Allow a non-loopback --bind (needs a token: whoever reaches the port moves the robot)."""
    token_file: Path | None = None
    """File holding the shared secret (default: the EBT_ROBOT_TOKEN environment variable)."""
    client_timeout: float = 0.5
    """Stop the robot when the client says nothing for this many seconds."""
    rate: float | None = None
    """Simulated robots: control rate in Hz (default: the task's)."""
    obs_latency: float = 0.0
    drop_prob: float = 0.0

    def __post_init__(self) -> None:
        if not self.client_timeout > 0:
            raise ConfigError(f"--client-timeout must be > 0, got {self.client_timeout}")


def server_main(argv: list[str]) -> int:
    """Entry point of `ebt-policy robot-server`."""
    import logging
    import os

    from ebt_policy.cli import parse_flags
    from ebt_policy.utils import default_mujoco_gl

    args = parse_flags(ServerArgs, argv, "ebt-policy robot-server")
    token = os.environ.get("EBT_ROBOT_TOKEN") or None
    if args.token_file is not None:
        if not args.token_file.is_file():
            raise ConfigError(f"--token-file {args.token_file}: no such file")
        token = args.token_file.read_text().strip() or None
    from ebt_policy.deploy.bridge import RobotServer, check_bind

    check_bind(args.bind, args.allow_remote, token)  # refused before the robot starts
    if not args.robot.startswith(("sim:", "ur-rtde:", "ur-fake:")):
        raise ConfigError(
            f"--robot {args.robot!r}: the server drives sim:<task>, ur-rtde:// and ur-fake://"
        )
    default_mujoco_gl()
    from ebt_policy.deploy.robots import make_robot

    if args.robot.startswith("sim:"):
        sim = dict(control_hz=args.rate, obs_latency_s=args.obs_latency, drop_prob=args.drop_prob)
        robot = make_robot(args.robot, **sim, **_ur_kwargs(args.robot, args.config))
    else:
        robot = make_robot(args.robot, **_ur_kwargs(args.robot, args.config))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = RobotServer(robot, args.bind, token, args.allow_remote, args.client_timeout)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"serving {robot.spec.name} at {args.bind} (Ctrl-C stops)", flush=True)
    server.serve()  # Ctrl-C / SIGTERM: the robot is stopped and disconnected on the way out
    return 0
