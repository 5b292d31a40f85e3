"""Does more descent keep a plan at a demonstrated mode? The objective benchmark on ``twogoal``.

    MUJOCO_GL=egl python benchmarks/objective.py RUN [RUN ...] [--steps 1 2 3 5 10 20 adaptive]
        [--episodes 50] [--chunks 100] [--json FILE]

For each trained EBT run (``ebt-policy train --out``) and each inference step count it reports:
closed-loop success over seeded episodes (seeds 100000 + i, never used by collection) and which
goal each episode reached (a policy that always picks one side is not multimodal); and, at the
chunk level, from observations recorded where the scripted expert holds before choosing a side,
``--chunks`` chunks from independent initial noise per observation: the fraction heading left,
right or neither (mean sideways action over the executed part beyond +-0.25). "adaptive" is a cap
of 20 steps with the gradient-norm stop at 1e-3 (the reference rule), "disp" the same cap with
only the displacement stop (0.01 RMS); every other setting runs exactly that many steps.
Prints a table measured on this run; ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

DISP_STOP = 0.01  # "disp": stop a sample once a step moves its chunk less than this (RMS)
SIDE_THRESHOLD = 0.25  # mean normalised sideways command that counts as "heading to a side"


def _window(history: list[dict[str, np.ndarray]], n_obs: int) -> dict[str, np.ndarray]:
    frames = ([history[0]] * n_obs + history)[-n_obs:]  # first frame repeated at episode start
    return {k: np.stack([f[k] for f in frames])[None] for k in frames[0]}  # key -> (1, To, ...)


def decision_windows(n: int, n_obs: int, seed: int = 200_000) -> list[dict[str, np.ndarray]]:
    """Observation windows at the expert's hold, before it has chosen a side."""
    from ebt_policy.envs import make_env
    from ebt_policy.envs.registry import make_expert

    out = []
    for i in range(n):
        env, expert = make_env("twogoal"), make_expert("twogoal", seed + i)
        obs, _ = env.reset(seed=seed + i)
        expert.reset()
        history = [obs]
        while expert.stage != 1:  # 1: holding still before the turn
            obs, *_ = env.step(expert.act(obs))
            history.append(obs)
        for _ in range(2):  # settle into the hold, still undecided
            obs, *_ = env.step(expert.act(obs))
            history.append(obs)
        out.append(_window(history, n_obs))
        env.close()
    return out


def chunk_modes(policy, windows, n_chunks: int, steps: int, min_grad: float, seed: int) -> dict:
    """Fractions of chunks heading left / right / neither from each decision window."""
    counts = np.zeros(3)
    start, ta = policy.n_obs_steps - 1, policy.n_action_steps
    import torch

    for j, window in enumerate(windows):
        batch = {k: np.repeat(v, n_chunks, axis=0) for k, v in window.items()}
        gen = torch.Generator().manual_seed(seed + j)
        pred = policy.predict_chunk(
            batch, generator=gen, descent_steps=steps, descent_min_grad=min_grad
        )
        side = pred.chunk[:, start : start + ta, 0].mean(axis=1)  # (n_chunks,)
        counts += [(side < -SIDE_THRESHOLD).sum(), (side > SIDE_THRESHOLD).sum(), 0]
        counts[2] += n_chunks - (np.abs(side) > SIDE_THRESHOLD).sum()
    frac = counts / counts.sum()
    return {"left": float(frac[0]), "right": float(frac[1]), "neither": float(frac[2])}


def closed_loop(policy, episodes: int, steps: int, min_grad: float, seed: int) -> dict:
    """Success and the goal reached per episode (single env, per-episode seeded noise)."""
    from ebt_policy.envs import make_env

    env = make_env("twogoal")
    reached = {"left": 0, "right": 0}
    successes, used = 0, []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        policy.reset()
        policy.start_episode(0, seed + i)
        history, queue, done = [obs], [], False
        while not done:
            if not queue:
                pred = policy.predict_chunk(
                    _window(history, policy.n_obs_steps),
                    rows=[0],
                    descent_steps=steps,
                    descent_min_grad=min_grad,
                )
                queue = list(pred.actions[0])
                used.append(int(pred.steps[0]))
            obs, _, terminated, truncated, info = env.step(queue.pop(0))
            history.append(obs)
            done = terminated or truncated
        if info["success"]:
            successes += 1
            reached["left" if obs["agent_pos"][0] < 0 else "right"] += 1
    env.close()
    return {
        "success": successes / episodes,
        "n_success": successes,
        "left": reached["left"] / episodes,
        "right": reached["right"] / episodes,
        "mean_steps": float(np.mean(used)),
    }


def verdict(rows: list[dict], run: str) -> str:
    """The issue's targets for twogoal, checked on this run's measurements."""
    many = [r for r in rows if r["steps"] not in ("1",)]  # 2..20, adaptive, disp
    checks = {
        "success >= 0.95 at every step count 2..20 and adaptive": all(
            r["success"] >= 0.95 for r in many
        ),
        "each goal reached in 30-70% of successful episodes": all(
            r["n_success"] and 0.3 <= r["left"] / r["success"] <= 0.7 for r in many
        ),
        "planner bimodal at the decision point (both sides >= 20% of chunks)": all(
            min(r["chunks"]["left"], r["chunks"]["right"]) >= 0.2 for r in many
        ),
        "success never falls as the step cap grows": all(
            b["success"] >= a["success"] - 0.04  # one episode in 25 of noise
            for a, b in zip(many, many[1:], strict=False)
            if a["steps"].isdigit() and b["steps"].isdigit()
        ),
    }
    lines = [f"{run}:"] + [f"  {'PASS' if ok else 'MISS'}  {what}" for what, ok in checks.items()]
    return "\n".join(lines)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from ebt_policy import load_policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    settings = ["1", "2", "3", "5", "10", "20", "adaptive", "disp"]
    parser.add_argument("--steps", nargs="+", default=settings)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--decision-obs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    table = Table(title=f"twogoal: success and modes vs descent steps ({args.episodes} episodes)")
    for col in ("run", "steps", "success", "left/right", "mean steps", "chunks L/R/neither"):
        table.add_column(col, justify="left" if col == "run" else "right")
    rows = []
    for run in args.runs:
        policy = load_policy(run)
        windows = decision_windows(args.decision_obs, policy.n_obs_steps)
        for setting in args.steps:
            # adaptive: gradient-norm stop (the reference rule); disp: displacement stop
            steps, min_grad = (20, 1e-3) if setting == "adaptive" else (20, 0.0)
            if setting not in ("adaptive", "disp"):
                steps = int(setting)
            policy.descent.config.descent_min_disp = DISP_STOP if setting == "disp" else 0.0
            cl = closed_loop(policy, args.episodes, steps, min_grad, args.seed)
            ch = chunk_modes(policy, windows, args.chunks, steps, min_grad, args.seed)
            rows.append({"run": str(run), "steps": setting, **cl, "chunks": ch})
            table.add_row(
                str(run), setting, f"{cl['n_success']}/{args.episodes}",
                f"{cl['left']:.2f}/{cl['right']:.2f}", f"{cl['mean_steps']:.2f}",
                f"{ch['left']:.2f}/{ch['right']:.2f}/{ch['neither']:.2f}",
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    console = Console(width=150)
    console.print(table)
    for run in args.runs:
        console.print(verdict([r for r in rows if r["run"] == str(run)], str(run)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
