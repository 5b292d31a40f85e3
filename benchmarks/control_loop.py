"""Timing of the deploy control loop with a policy in the loop, against the real-time sim robot.

    MUJOCO_GL=egl python benchmarks/control_loop.py [--checkpoint RUN] [--task twogoal]
        [--rate 20] [--duration 10] [--preset tiny] [--no-bridge]

Runs the loop twice: against a SimRobot in this process, and over the bridge against
``ebt-policy robot-server`` in a child process (loopback).

Without ``--checkpoint`` an untrained EBT policy of ``--preset`` on the task's observations is
used: the timing depends on the network's size, not on its weights. Prints one table: the loop
period's jitter (|period - 1/rate|, p50/p99/max), the observation-to-action latency (capture of
the frame a chunk was planned from to the tick its first action was sent, p50/p99/max), the
planning latency, and the counts of held (over-budget) ticks and dropped late actions. The
target on the 2-core CPU: p99 jitter under 5 ms at 20 Hz while inference runs. Measured here,
not asserted in the unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from ebt_policy.utils import default_mujoco_gl

default_mujoco_gl()


def untrained_policy(task: str, preset: str):
    """An EBT policy of ``preset`` on ``task``'s low-dim observations, with unit statistics."""
    from ebt_policy.envs import get_task
    from ebt_policy.envs.registry import make_env
    from ebt_policy.policies import make_policy, make_policy_config

    spec = get_task(task)
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    env.close()
    dims = {k: int(np.asarray(obs[k]).size) for k in spec.low_dim_keys}
    shape_meta = {
        "obs": {k: {"shape": [d], "type": "low_dim"} for k, d in dims.items()},
        "action": {"shape": [spec.action_dim]},
    }
    stats = {
        k: {"min": [-1.0] * d, "q01": [-1.0] * d, "mean": [0.0] * d}
        | {"max": [1.0] * d, "q99": [1.0] * d, "std": [1.0] * d}
        for k, d in {**dims, "action": spec.action_dim}.items()
    }
    return make_policy(make_policy_config("ebt", preset), shape_meta, stats).eval()


def obs_to_action_ms(log) -> np.ndarray:
    """Per chunk: first tick that sent one of its actions minus its observation's capture."""
    first: dict[int, float] = {}
    for s in log:
        if s.chunk >= 0 and s.chunk not in first:
            first[s.chunk] = s.tick - s.chunk_obs_time
    return np.array(list(first.values())) * 1e3


def measure(policy, robot, rate: float, steps: int) -> tuple[dict[str, np.ndarray], str]:
    """Run episodes until ``steps`` ticks are done (a robot that ends episodes on success gets
    new ones); the timing arrays (ms) and a line of counts."""
    from collections import Counter

    from ebt_policy.deploy.loop import DeployLoop, LoopConfig

    reports = []
    with robot:
        loop = DeployLoop(policy, robot, LoopConfig(rate_hz=rate, max_steps=steps))
        try:
            while sum(r.steps for r in reports) < steps:
                reports.append(loop.run_episode(len(reports), seed=len(reports)))
                if reports[-1].fault is not None:
                    break
        finally:
            loop.close()
    ev = sum((r.events for r in reports), Counter())
    faults = [r.fault for r in reports if r.fault] or ["none"]
    counts = (
        f"{sum(r.steps for r in reports)} ticks in {len(reports)} episodes, fault {faults[0]}, "
        f"over-budget {ev['over_budget']}, dropped late {ev['dropped_late']}"
    )
    return {
        "loop period jitter": np.concatenate(
            [np.abs(r.periods() - 1.0 / rate) * 1e3 for r in reports]
        ),
        "obs-to-action latency": np.concatenate([obs_to_action_ms(r.log) for r in reports]),
        "planning latency": np.concatenate([r.latencies_s for r in reports]) * 1e3,
    }, counts


@contextlib.contextmanager
def robot_server(task: str, rate: float):
    """``ebt-policy robot-server`` for ``task`` in a child process; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    cmd = [sys.executable, "-m", "ebt_policy.cli", "robot-server", "--robot", f"sim:{task}"]
    cmd += ["--bind", address, "--rate", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if "serving" not in proc.stdout.readline():
            raise RuntimeError("robot-server did not start")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ebt_policy import load_policy
    from ebt_policy.deploy.bridge import RemoteRobot
    from ebt_policy.deploy.robots.sim import SimRobot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--task", default="twogoal")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    parser.add_argument("--no-bridge", action="store_true", help="in-process only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint is not None:
        policy = load_policy(args.checkpoint)
    else:
        policy = untrained_policy(args.task, args.preset)
    steps = int(args.duration * args.rate)
    env_kwargs = {"terminate_on_success": False}  # the whole duration, whatever the policy does
    runs = {"in-process": measure(policy, SimRobot(args.task, args.rate, env_kwargs=env_kwargs),
                                  args.rate, steps)}  # fmt: skip
    if not args.no_bridge:
        with robot_server(args.task, args.rate) as address:
            runs["bridge"] = measure(policy, RemoteRobot(address), args.rate, steps)

    table = Table(title=f"control loop: {args.task} at {args.rate:g} Hz, {args.duration:g} s")
    for col in ("robot", "measure (ms)", "p50", "p99", "max"):
        table.add_column(col)
    for mode, (rows, _) in runs.items():
        for name, values in rows.items():
            if values.size:
                p50, p99, top = np.quantile(values, 0.5), np.quantile(values, 0.99), values.max()
                table.add_row(mode, name, f"{p50:.2f}", f"{p99:.2f}", f"{top:.2f}")
    table.caption = "; ".join(f"{mode}: {counts}" for mode, (_, counts) in runs.items())
    Console().print(table)


if __name__ == "__main__":
    main()
