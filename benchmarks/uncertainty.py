"""Energy as uncertainty: AUROC of the calibrated score, raw energy and raw gradient norm.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/uncertainty.py \\
        [--lift NAME=RUN:STORE:STEPS ...] [--twogoal NAME=RUN:STORE:STEPS ...] \\
        [--windows 600] [--seeds 8] [--episodes 50]

e.g. ``--lift new=runs/quickstart/run:runs/quickstart/demos.zarr:2`` (a run, the store it was
trained on, the descent steps to plan with).

(b) in-distribution vs perturbed observations (Lift): observation windows from the demos that
each run's training split held out (in-distribution) and the same windows perturbed:
``noise`` (Gaussian, 3% of each low-dim key's range), ``displaced`` (cube moved 4 cm in a random
horizontal direction, ``object``'s cube position and gripper-to-cube vector both), ``frozen``
(both To frames equal to the older one); noise and displacement also at 10%/10 cm and
30%/20 cm. Each window is planned with ``--seeds`` initial noises.
The calibration is measured first on the same held-out episodes with other noise seeds; the
score is a monotone map of one statistic, so its AUROC equals that statistic's except for the
ties its clamping at 0 and 1 makes.

(a) failed vs successful episodes (twogoal, closed loop): every chunk of ``--episodes`` seeded
episodes, labelled by its episode's outcome (chunk level), each episode's mean score (episode
level), and each episode's mean score over its first ``EARLY_CHUNKS`` chunks (a failed episode
runs to the step cap, so its later chunks come from states after the failure that a successful
episode never reaches; the early rows show whether the score warns before the outcome).
Any task's run works here (`can` fails often at small budgets); Lift runs succeed 50/50, so the
README runs (a) on twogoal at 1 descent step and on can, where failures exist.

AUROC is computed rank-based (Mann-Whitney U, ties counted half): P(score of a positive >
score of a negative), positive = perturbed / failed. 0.5 is chance. Prints one table measured on
this run. Checkpoints are only read (the calibration stays in memory).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ebt_policy.utils import default_mujoco_gl

default_mujoco_gl()

# (noise as a fraction of each key's range, cube displacement in m): the issue's "a few cm and
# a few percent" first, then larger ones to show where the scores start to respond
SCALES = ((0.03, 0.04), (0.1, 0.1), (0.3, 0.2))


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(tie), from average ranks (Mann-Whitney U)."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    values = np.concatenate([neg, pos])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    # average rank of each run of equal values (ties count half)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2  # ranks s+1 .. e
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def parse_run(text: str) -> tuple[str, str, str, int]:
    name, _, rest = text.partition("=")
    run, store, steps = rest.rsplit(":", 2)
    return name, run, store, int(steps)


def lift_perturbations(
    store, noise_fraction: float = 0.03, displacement_m: float = 0.04
) -> dict[str, Callable]:
    """name -> obs_transform(obs, seed) -> obs, for windows of ``store``'s Lift episodes."""
    from ebt_policy.datasets import compute_stats

    keys = [k for k in store.keys if k != "action" and not store.is_rgb(k)]
    stats = compute_stats(store, keys=keys, write=False)
    span = {k: np.asarray(stats[k]["max"]) - np.asarray(stats[k]["min"]) for k in keys}
    # robosuite's gripper_to_cube_pos (object[7:10]) is eef_pos - cube_pos: check the sign
    obj, eef = store.read("object", 0, 200), store.read("robot0_eef_pos", 0, 200)
    sign = 1.0 if np.abs(obj[:, 7:10] - (eef - obj[:, :3])).max() < 1e-3 else -1.0

    def noise(obs: dict, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {
            k: v + (rng.normal(size=v.shape) * noise_fraction * span[k]).astype(v.dtype)
            for k, v in obs.items()
        }

    def displaced(obs: dict, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        obj = obs["object"].copy()  # (B, To, 10)
        angle = rng.uniform(0, 2 * np.pi, size=obj.shape[0])
        d = displacement_m * np.stack([np.cos(angle), np.sin(angle), 0 * angle], -1)  # (B, 3)
        obj[..., 0:3] += d[:, None].astype(obj.dtype)
        obj[..., 7:10] -= sign * d[:, None].astype(obj.dtype)
        return {**obs, "object": obj}

    def frozen(obs: dict, seed: int) -> dict:
        return {k: np.repeat(v[:, :1], v.shape[1], axis=1) for k, v in obs.items()}

    return {"noise": noise, "displaced": displaced, "frozen": frozen}


def scores(calibration, energy: np.ndarray, grad: np.ndarray) -> dict[str, np.ndarray]:
    """The three scores the tables compare."""
    return {"score": calibration.uncertainty(energy, grad), "energy": energy, "grad_norm": grad}


def lift_rows(spec: str, windows: int, seeds: int) -> list[list[str]]:
    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies.calibrate_cli import (
        calibrate,
        held_out_episodes,
        window_subset,
        window_values,
    )
    from ebt_policy.policies.checkpoint import read_checkpoint_config

    name, run, store_path, steps = parse_run(spec)
    # calibration on all held-out windows, noise seeds distinct from the test's (seed offset)
    calibration = calibrate(run, store_path, windows=10_000, descent_steps=steps, write=False)
    policy = load_policy(run)
    policy.set_inference(descent_steps=steps)
    store = EpisodeStore.open(store_path, "r")
    episodes = held_out_episodes(read_checkpoint_config(run)["train_config"], store.n_episodes)
    ds, idx = window_subset(policy, store, episodes, windows)

    def measure(transform=None) -> dict[str, np.ndarray]:
        # noise seeds 1.. (the calibration drew seed 0)
        e, g = window_values(policy, ds, idx, seeds=seeds, first_seed=1, obs_transform=transform)
        return scores(calibration, e, g)

    base = measure()
    rows = []
    transforms = {}
    for i, (frac, metres) in enumerate(SCALES):
        perts = lift_perturbations(store, frac, metres)
        transforms[f"noise {frac:.0%}"] = perts["noise"]
        transforms[f"displaced {metres * 100:.0f} cm"] = perts["displaced"]
        if i == 0:  # frozen frames have no scale
            transforms["frozen"] = perts["frozen"]
    for pert, transform in transforms.items():
        perturbed = measure(transform)
        aucs = [auroc(base[s], perturbed[s]) for s in ("score", "energy", "grad_norm")]
        rows.append(
            [f"{name} ({calibration.score}, {steps} steps)", pert, f"{base['score'].size}"]
            + [f"{a:.3f}" for a in aucs]
            + [f"{np.median(base['score']):.2f} / {np.median(perturbed['score']):.2f}"]
        )
    return rows


def twogoal_rows(spec: str, episodes: int) -> list[list[str]]:
    from ebt_policy import load_policy
    from ebt_policy.envs.cli import checkpoint_metadata
    from ebt_policy.envs.runner import EvalConfig, evaluate
    from ebt_policy.policies.calibrate_cli import calibrate

    name, run, store_path, steps = parse_run(spec)
    calibration = calibrate(run, store_path, windows=2000, descent_steps=steps, write=False)
    policy = load_policy(run)
    policy.set_inference(descent_steps=steps)
    result = evaluate(policy, EvalConfig(metadata=checkpoint_metadata(run), episodes=episodes))
    chunk = {True: ([], []), False: ([], [])}
    per_episode = {True: [], False: []}
    early = {True: [], False: []}  # the first EARLY_CHUNKS chunks only
    for rec in result.episodes:
        e = np.array([c.energy for c in rec.chunks], np.float64)
        g = np.array([c.grad_norm for c in rec.chunks], np.float64)
        chunk[rec.success][0].append(e)
        chunk[rec.success][1].append(g)
        per_episode[rec.success].append(
            {k: float(np.mean(v)) for k, v in scores(calibration, e, g).items()}
        )
        # a failed episode runs to the step cap, so its later chunks come from states a
        # successful one never reaches (after the failure): the early chunks show whether the
        # score warns before the outcome is decided
        ee, ge = e[:EARLY_CHUNKS], g[:EARLY_CHUNKS]
        early[rec.success].append(
            {k: float(np.mean(v)) for k, v in scores(calibration, ee, ge).items()}
        )
    n_ok, n_fail = len(per_episode[True]), len(per_episode[False])
    label = f"{name} ({calibration.score}, {steps} step)"
    if not n_ok or not n_fail:
        return [[label, f"{n_ok}/{episodes} succeed: no AUROC", "", "", "", "", ""]]
    ok = scores(calibration, *(np.concatenate(v) for v in chunk[True]))
    fail = scores(calibration, *(np.concatenate(v) for v in chunk[False]))
    stats = ("score", "energy", "grad_norm")
    ep_ok = {s: np.array([d[s] for d in per_episode[True]]) for s in stats}
    ep_fail = {s: np.array([d[s] for d in per_episode[False]]) for s in stats}
    early_ok = {s: np.array([d[s] for d in early[True]]) for s in stats}
    early_fail = {s: np.array([d[s] for d in early[False]]) for s in stats}
    return [
        [label, f"chunks ({n_ok}/{episodes} succeed)", f"{ok['score'].size + fail['score'].size}"]
        + [f"{auroc(ok[s], fail[s]):.3f}" for s in stats]
        + [f"{np.median(ok['score']):.2f} / {np.median(fail['score']):.2f}"],
        [label, "episodes (mean score)", f"{episodes}"]
        + [f"{auroc(ep_ok[s], ep_fail[s]):.3f}" for s in stats]
        + [f"{np.median(ep_ok['score']):.2f} / {np.median(ep_fail['score']):.2f}"],
        [label, f"episodes (first {EARLY_CHUNKS} chunks)", f"{episodes}"]
        + [f"{auroc(early_ok[s], early_fail[s]):.3f}" for s in stats]
        + [f"{np.median(early_ok['score']):.2f} / {np.median(early_fail['score']):.2f}"],
    ]


TARGET_AUROC = 0.8  # what the score should reach for both (a) and (b)
EARLY_CHUNKS = 10  # (a): the first chunks of an episode, before most outcomes are decided


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lift", nargs="*", default=[], metavar="NAME=RUN:STORE:STEPS")
    parser.add_argument("--twogoal", nargs="*", default=[], metavar="NAME=RUN:STORE:STEPS")
    parser.add_argument("--windows", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    if not args.lift and not args.twogoal:
        parser.error("give runs with --lift and/or --twogoal NAME=RUN:STORE:STEPS")
    console = Console(width=150)
    t0 = time.perf_counter()
    columns = ["run (score on, steps)", "condition", "chunks", "AUROC score", "AUROC energy"]
    columns += ["AUROC grad_norm", f"target AUROC >= {TARGET_AUROC}"]
    tables = [
        ("(b) Lift: held-out demo windows vs perturbed", args.lift, "ID / perturbed"),
        (
            "(a) successful vs failed episodes (--twogoal runs, any task)",
            args.twogoal,
            "success / fail",
        ),
    ]
    for title, specs, median_label in tables:
        table = Table(title=title)
        for col in [*columns, f"median score {median_label}"]:
            table.add_column(col)
        for spec in specs:
            if specs is args.lift:
                rows = lift_rows(spec, args.windows, args.seeds)
            else:
                rows = twogoal_rows(spec, args.episodes)
            for row in rows:
                verdict = "-" if not row[3] else "PASS" if float(row[3]) >= TARGET_AUROC else "MISS"
                table.add_row(*row[:6], verdict, *row[6:])
        console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
