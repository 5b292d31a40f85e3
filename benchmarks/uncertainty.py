"""Energy as uncertainty: AUROC of the calibrated score, raw energy and raw gradient norm.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/uncertainty.py \\
        [--lift NAME=RUN:STORE:STEPS ...] [--pusht NAME=RUN:STORE:STEPS ...] \\
        [--twogoal NAME=RUN:STORE:STEPS ...] \\
        [--windows 600] [--seeds 8] [--episodes 50] [--best-of K]

e.g. ``--lift new=runs/quickstart/run:runs/quickstart/demos.zarr:2`` (a run, the store it was
trained on, the descent steps to plan with).

(b) in-distribution vs perturbed observations (Lift, PushT): observation windows from the demos
that each run's training split held out (in-distribution) and the same windows perturbed:
``noise`` (Gaussian, 3% of each low-dim key's range), ``displaced`` (the object moved in a random
horizontal direction: Lift's cube 4 cm, ``object``'s cube position and gripper-to-cube vector
both; PushT's T block 20 px, all its keypoints), ``frozen`` (both To frames equal to the older
one); noise and displacement also at 10% / 10 cm / 50 px and 30% / 20 cm / 100 px.
Each window is planned with ``--seeds`` initial noises.
The calibration is measured first on the same held-out episodes with other noise seeds; the
score is a monotone map of one statistic, so its AUROC equals that statistic's except for the
ties its clamping at 0 and 1 makes. Beside the policy's energy scores, both (a) and (b) report
the observation novelty (``ebt-policy calibrate --novelty``, policies/novelty.py, built in
memory from the run's store): the distance from each (perturbed) window's observations, every
low-dim key divided by its range, to the nearest window of the training episodes; in (b) its raw
distance, in (a) the calibrated score the chunk carries. It ignores the actions: where even it is
near 0.5 in (b) the perturbed observations look like ones training saw, and no score should be
expected to flag them; where it is high the information is in the observation and a score that
misses it is blind to it.

(a) failed vs successful episodes (twogoal, closed loop): every chunk of ``--episodes`` seeded
episodes, labelled by its episode's outcome (chunk level), each episode's mean score (episode
level), and each episode's mean score over its first ``EARLY_CHUNKS`` chunks (a failed episode
runs to the step cap, so its later chunks come from states after the failure that a successful
episode never reaches; the early rows show whether the score warns before the outcome).
Any task's run works here (`can` fails often at small budgets); Lift runs succeed 50/50, so the
README runs (a) on twogoal at 1 descent step and on can, where failures exist. With
``--best-of K`` every chunk is planned from K initial noises at once (the lowest-energy one is
executed, as ``ebt-policy eval --best-of K``) and (a) also reports the AUROC of the K
candidates' spread (``ChunkPrediction.spread``): whether the planner disagrees with itself more
in episodes that fail.

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

# noise as a fraction of each key's range, and the object's displacement per task (Lift: the
# cube, in m; PushT: the T block, in pixels of its 512-pixel workspace): the issue's "a few cm
# and a few percent" first (4 cm of Lift's ~0.8 m table, 20 px of PushT's 512 px: 4-5% of the
# workspace each), then larger ones to show where the scores start to respond
NOISE_FRACTIONS = (0.03, 0.1, 0.3)
DISPLACEMENTS = {"lift": (0.04, 0.1, 0.2), "pusht": (20.0, 50.0, 100.0)}
DISPLACEMENT_UNITS = {"lift": "cm", "pusht": "px"}


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


def perturbations(
    task: str, store, noise_fraction: float = 0.03, displacement: float | None = None
) -> dict[str, Callable]:
    """name -> obs_transform(obs, seed) -> obs, for windows of ``store``'s ``task`` episodes
    (``displacement`` in the task's unit, see ``DISPLACEMENTS``; its smallest by default)."""
    from ebt_policy.datasets import compute_stats

    if task not in DISPLACEMENTS:
        raise ValueError(f"task {task!r}: perturbations exist for {sorted(DISPLACEMENTS)}")
    if displacement is None:
        displacement = DISPLACEMENTS[task][0]
    keys = [k for k in store.keys if k != "action" and not store.is_rgb(k)]
    stats = compute_stats(store, keys=keys, write=False)
    span = {k: np.asarray(stats[k]["max"]) - np.asarray(stats[k]["min"]) for k in keys}
    displace = (_lift_displacement if task == "lift" else _pusht_displacement)(store, displacement)

    def noise(obs: dict, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {
            k: v + (rng.normal(size=v.shape) * noise_fraction * span[k]).astype(v.dtype)
            for k, v in obs.items()
        }

    def frozen(obs: dict, seed: int) -> dict:
        return {k: np.repeat(v[:, :1], v.shape[1], axis=1) for k, v in obs.items()}

    return {"noise": noise, "displaced": displace, "frozen": frozen}


def _random_shift(batch: int, length: float, seed: int, dims: int) -> np.ndarray:
    """(batch, dims) shifts of ``length`` in a uniformly random horizontal direction."""
    angle = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=batch)
    d = length * np.stack([np.cos(angle), np.sin(angle)], -1)
    return np.concatenate([d, np.zeros((batch, dims - 2))], -1)


def _lift_displacement(store, metres: float) -> Callable:
    """Move the cube ``metres`` horizontally: ``object``'s cube position and gripper-to-cube
    vector both."""
    # robosuite's gripper_to_cube_pos (object[7:10]) is eef_pos - cube_pos: check the sign
    obj, eef = store.read("object", 0, 200), store.read("robot0_eef_pos", 0, 200)
    sign = 1.0 if np.abs(obj[:, 7:10] - (eef - obj[:, :3])).max() < 1e-3 else -1.0

    def displaced(obs: dict, seed: int) -> dict:
        obj = obs["object"].copy()  # (B, To, 10)
        d = _random_shift(obj.shape[0], metres, seed, 3).astype(obj.dtype)[:, None]
        obj[..., 0:3] += d
        obj[..., 7:10] -= sign * d
        return {**obs, "object": obj}

    return displaced


def _pusht_displacement(store, pixels: float) -> Callable:
    """Move the T block ``pixels`` in the plane: every keypoint of ``block_keypoints`` (8 corners,
    x/y interleaved) and, where present, ``block_pose``'s position, by the same vector."""

    def displaced(obs: dict, seed: int) -> dict:
        out = dict(obs)
        kp = obs["block_keypoints"]  # (B, To, 16)
        d = _random_shift(kp.shape[0], pixels, seed, 2).astype(kp.dtype)  # (B, 2)
        out["block_keypoints"] = kp + np.tile(d, 8)[:, None]
        if "block_pose" in obs:
            pose = obs["block_pose"].copy()
            pose[..., :2] += d[:, None]
            out["block_pose"] = pose
        return out

    return displaced


def novelty_distance(
    index, dataset, indices, *, seeds: int, first_seed: int, transform=None
) -> np.ndarray:
    """Distance from each window of ``dataset`` (``indices``, seed-major like
    ``window_values``, perturbed by ``transform`` with the same per-batch seeds) to its nearest
    training window: the observation-novelty index's own distance (policies/novelty.py), which
    knows nothing about actions, only which observations training saw."""
    out = []
    for seed in range(first_seed, first_seed + seeds):
        for start in range(0, len(indices), 256):  # window_values' batches and seeds
            items = [dataset[int(i)]["obs"] for i in indices[start : start + 256]]
            obs = {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}
            if transform is not None:
                obs = transform(obs, seed * 1_000_003 + start)
            out.append(index.distance(obs))
    return np.concatenate(out)


def scores(calibration, energy: np.ndarray, grad: np.ndarray) -> dict[str, np.ndarray]:
    """The three scores the tables compare."""
    return {"score": calibration.uncertainty(energy, grad), "energy": energy, "grad_norm": grad}


def perturbation_rows(task: str, spec: str, windows: int, seeds: int) -> list[list[str]]:
    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies.calibrate_cli import (
        calibrate,
        calibrate_novelty,
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
    # the novelty index `ebt-policy calibrate --novelty` would store: training windows' bank,
    # held-out quantiles (kept in memory; the distance's AUROC does not depend on them)
    index = calibrate_novelty(run, store_path, write=False)
    index_deltas = calibrate_novelty(run, store_path, deltas=True, write=False)

    def measure(transform=None) -> dict[str, np.ndarray]:
        # noise seeds 1.. (the calibration drew seed 0)
        e, g, _ = window_values(policy, ds, idx, seeds=seeds, first_seed=1, obs_transform=transform)
        out = scores(calibration, e, g)
        for key, ix in (("novelty", index), ("novelty_deltas", index_deltas)):
            out[key] = novelty_distance(ix, ds, idx, seeds=seeds, first_seed=1, transform=transform)
        return out

    base = measure()
    rows = []
    transforms = {}
    unit = DISPLACEMENT_UNITS[task]
    for i, (frac, shift) in enumerate(zip(NOISE_FRACTIONS, DISPLACEMENTS[task], strict=True)):
        perts = perturbations(task, store, frac, shift)
        transforms[f"noise {frac:.0%}"] = perts["noise"]
        size = shift * 100 if unit == "cm" else shift
        transforms[f"displaced {size:.0f} {unit}"] = perts["displaced"]
        if i == 0:  # frozen frames have no scale
            transforms["frozen"] = perts["frozen"]
    for pert, transform in transforms.items():
        perturbed = measure(transform)
        aucs = [auroc(base[s], perturbed[s]) for s in ("score", "energy", "grad_norm")]
        rows.append(
            [f"{name} ({calibration.score}, {steps} steps)", pert, f"{base['score'].size}"]
            + [f"{a:.3f}" for a in aucs]
            + [f"{np.median(base['score']):.2f} / {np.median(perturbed['score']):.2f}"]
            + [f"{auroc(base[k], perturbed[k]):.3f}" for k in ("novelty", "novelty_deltas")]
        )
    return rows


def twogoal_rows(
    spec: str, episodes: int, best_of: int = 1, deltas: bool = False
) -> list[list[str]]:
    from ebt_policy import load_policy
    from ebt_policy.envs.cli import checkpoint_metadata
    from ebt_policy.envs.runner import EvalConfig, evaluate
    from ebt_policy.policies.calibrate_cli import calibrate, calibrate_novelty

    name, run, store_path, steps = parse_run(spec)
    calibration = calibrate(run, store_path, windows=2000, descent_steps=steps, write=False)
    policy = load_policy(run)
    # every chunk records its observation novelty (the index in memory, the checkpoint unread)
    policy.novelty = calibrate_novelty(run, store_path, deltas=deltas, write=False)
    policy.set_inference(descent_steps=steps)
    if best_of > 1:  # plans keep the lowest-energy candidate; the K candidates give a spread
        policy.set_engine(best_of=best_of)
    result = evaluate(policy, EvalConfig(metadata=checkpoint_metadata(run), episodes=episodes))
    stats = ("score", "energy", "grad_norm", "novelty") + (("spread",) if best_of > 1 else ())

    def episode_scores(chunks) -> dict[str, np.ndarray]:
        e = np.array([c.energy for c in chunks], np.float64)
        g = np.array([c.grad_norm for c in chunks], np.float64)
        out = scores(calibration, e, g)
        out["novelty"] = np.array([c.novelty for c in chunks], np.float64)
        if best_of > 1:
            out["spread"] = np.array([c.spread for c in chunks], np.float64)
        return out

    chunk = {True: [], False: []}
    per_episode = {True: [], False: []}
    early = {True: [], False: []}  # the first EARLY_CHUNKS chunks only
    for rec in result.episodes:
        values = episode_scores(rec.chunks)
        chunk[rec.success].append(values)
        per_episode[rec.success].append({k: float(np.mean(v)) for k, v in values.items()})
        # a failed episode runs to the step cap, so its later chunks come from states a
        # successful one never reaches (after the failure): the early chunks show whether the
        # score warns before the outcome is decided
        early[rec.success].append({k: float(np.mean(v[:EARLY_CHUNKS])) for k, v in values.items()})
    n_ok, n_fail = len(per_episode[True]), len(per_episode[False])
    label = f"{name} ({calibration.score}, {steps} step" + (
        f", best of {best_of})" if best_of > 1 else ")"
    )
    if not n_ok or not n_fail:
        return [[label, f"{n_ok}/{episodes} succeed: no AUROC", "", "", "", "", "", ""]]

    def gather(group: dict, flat: bool) -> dict[str, dict[bool, np.ndarray]]:
        if flat:
            return {s: {o: np.concatenate([d[s] for d in group[o]]) for o in group} for s in stats}
        return {s: {o: np.array([d[s] for d in group[o]]) for o in group} for s in stats}

    rows = []
    for cond, group, flat in (
        (f"chunks ({n_ok}/{episodes} succeed)", chunk, True),
        ("episodes (mean score)", per_episode, False),
        (f"episodes (first {EARLY_CHUNKS} chunks)", early, False),
    ):
        g = gather(group, flat)
        size = g["score"][True].size + g["score"][False].size
        rows.append(
            [label, cond, f"{size}"]
            + [f"{auroc(g[s][True], g[s][False]):.3f}" for s in ("score", "energy", "grad_norm")]
            + [f"{np.median(g['score'][True]):.2f} / {np.median(g['score'][False]):.2f}"]
            + [f"{auroc(g['novelty'][True], g['novelty'][False]):.3f}"]
            + ([f"{auroc(g['spread'][True], g['spread'][False]):.3f}"] if best_of > 1 else [])
        )
    return rows


TARGET_AUROC = 0.8  # what the score should reach for both (a) and (b)
EARLY_CHUNKS = 10  # (a): the first chunks of an episode, before most outcomes are decided


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lift", nargs="*", default=[], metavar="NAME=RUN:STORE:STEPS")
    parser.add_argument("--pusht", nargs="*", default=[], metavar="NAME=RUN:STORE:STEPS")
    parser.add_argument("--twogoal", nargs="*", default=[], metavar="NAME=RUN:STORE:STEPS")
    parser.add_argument("--windows", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument(
        "--best-of",
        type=int,
        default=1,
        help="(a) only: plan every chunk best-of-K and report the AUROC of the K candidates' "
        "spread too (the planner's own disagreement)",
    )
    parser.add_argument(
        "--novelty-deltas",
        action="store_true",
        help="(a) only: the novelty index also compares frame-to-frame changes "
        "(calibrate --novelty-deltas); (b) always reports both",
    )
    args = parser.parse_args()
    if not args.lift and not args.pusht and not args.twogoal:
        parser.error("give runs with --lift, --pusht and/or --twogoal NAME=RUN:STORE:STEPS")
    console = Console(width=150)
    t0 = time.perf_counter()
    columns = ["run (score on, steps)", "condition", "chunks", "AUROC score", "AUROC energy"]
    columns += ["AUROC grad_norm", f"target AUROC >= {TARGET_AUROC}"]
    tables = [
        ("(b) Lift: held-out demo windows vs perturbed", args.lift, "ID / perturbed"),
        ("(b) PushT: held-out demo windows vs perturbed", args.pusht, "ID / perturbed"),
        (
            "(a) successful vs failed episodes (--twogoal runs, any task)",
            args.twogoal,
            "success / fail",
        ),
    ]
    for title, specs, median_label in tables:
        if not specs:
            continue
        table = Table(title=title)
        if specs is args.twogoal:
            extra = ["AUROC novelty" + (" (+ frame changes)" if args.novelty_deltas else "")]
        else:
            extra = ["AUROC novelty distance", "AUROC novelty + frame changes"]
        if specs is args.twogoal and args.best_of > 1:
            extra.append(f"AUROC spread (best of {args.best_of})")
        for col in [*columns, f"median score {median_label}", *extra]:
            table.add_column(col)
        for spec in specs:
            if specs is args.lift or specs is args.pusht:
                task = "lift" if specs is args.lift else "pusht"
                rows = perturbation_rows(task, spec, args.windows, args.seeds)
            else:
                rows = twogoal_rows(spec, args.episodes, args.best_of, args.novelty_deltas)
            for row in rows:
                verdict = "-" if not row[3] else "PASS" if float(row[3]) >= TARGET_AUROC else "MISS"
                table.add_row(*row[:6], verdict, *row[6:])
        console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
