"""`ebt-policy calibrate`: measure a checkpoint's uncertainty calibration on held-out demos.

Usage::

    ebt-policy calibrate --checkpoint RUN --dataset STORE [--windows 2000] [--seeds 1]
        [--score energy|grad_norm|spread] [--best-of K] [--episodes 3,17,...]

Runs the policy's own inference (its configured descent steps) on windows of the episodes its
training split held out (the same seeded split as training: ``train_config.seed`` and
``val_fraction`` over the store's episodes), and writes the quantiles of the final energy and
gradient norm (and with ``--best-of K`` the K candidates' spread) to ``calibration.json`` in the
checkpoint directory (policies/calibration.py).
This module may import the episode store; loading and running a policy never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import ConfigError, DatasetError
from ebt_policy.policies.calibration import (
    STATISTICS,
    Calibration,
    default_score,
    weights_sha256,
    write_calibration,
)


def held_out_episodes(train_config: dict[str, Any], n_episodes: int) -> list[int]:
    """The episodes training held out of a store of ``n_episodes``, by training's own seeded
    split (none when it trained on all of them)."""
    from ebt_policy.datasets import split_episodes

    val_fraction = float(train_config.get("val_fraction", 0.0))
    if val_fraction > 0 and n_episodes >= 2:  # as training.data.make_data
        return split_episodes(n_episodes, val_fraction=val_fraction, seed=train_config["seed"])[1]
    return []


def window_subset(
    policy: Any, store: Any, episodes: Sequence[int], windows: int
) -> tuple[Any, Any]:
    """The policy's WindowDataset over ``episodes`` of ``store`` and at most ``windows`` window
    indices evenly spaced over it (what calibration and the benchmarks plan on)."""
    from ebt_policy.datasets import WindowDataset

    keys = policy.low_dim_keys + policy.rgb_keys
    dataset = WindowDataset(
        store, keys, n_obs_steps=policy.n_obs_steps, horizon=policy.horizon, episodes=episodes
    )
    n = len(dataset)
    return dataset, np.unique(np.linspace(0, n - 1, min(windows, n)).round().astype(int))


def window_values(
    policy: Any,
    dataset: Any,
    indices: Sequence[int],
    *,
    seeds: int = 1,
    first_seed: int = 0,
    batch_size: int = 256,
    obs_transform: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Final energy, gradient norm and best-of-K spread (each (len(indices) * seeds,); spread
    None when the policy plans from one candidate) of the policy's inference
    on windows ``indices`` of a WindowDataset, seed-major, noise seeds ``first_seed`` ..
    ``first_seed + seeds - 1``.

    ``obs_transform(obs, seed) -> obs`` (optional) changes each batch's observation window first
    (the uncertainty benchmark's perturbations).
    """
    import torch

    energy, grad, spread = [], [], []
    for seed in range(first_seed, first_seed + seeds):
        for start in range(0, len(indices), batch_size):
            items = [dataset[int(i)]["obs"] for i in indices[start : start + batch_size]]
            obs = {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}
            if obs_transform is not None:
                obs = obs_transform(obs, seed * 1_000_003 + start)
            gen = torch.Generator(device=policy.device).manual_seed(seed * 1_000_003 + start)
            pred = policy.predict_chunk(obs, generator=gen)
            energy.append(pred.energy)
            grad.append(pred.grad_norm)
            spread.append(pred.spread)
    spreads = None if any(s is None for s in spread) else np.concatenate(spread)
    return np.concatenate(energy), np.concatenate(grad), spreads


def calibrate(
    checkpoint: str | Path,
    dataset: str | Path,
    *,
    windows: int = 2000,
    seeds: int = 1,
    score: str | None = None,
    episodes: Sequence[int] | None = None,
    descent_steps: int | None = None,
    best_of: int = 1,
    batch_size: int = 256,
    write: bool = True,
) -> Calibration:
    """Measure (and by default write) the calibration of ``checkpoint`` on ``dataset``.

    Args:
        checkpoint: anything load_policy takes.
        dataset: the episode store the policy was trained on.
        windows: at most this many held-out windows, evenly spaced over them.
        seeds: initial-noise draws per window.
        score: the statistic ``uncertainty`` maps (default: :func:`default_score`).
        episodes: calibrate on these episodes instead of training's held-out ones.
        descent_steps: plan with this many steps instead of the checkpoint's (the scores then
            apply to a policy planning with it, e.g. ``ebt-policy eval --descent-steps``).
        best_of: plan every chunk from this many initial noises (the scores then apply to a
            policy planning best-of-K with the same K); K >= 2 also measures their spread.
        write: write ``calibration.json`` into the checkpoint directory.

    Raises:
        ConfigError / DatasetError / CheckpointError: one line naming the flag, store or file.
    """
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies.checkpoint import (
        WEIGHTS_NAME,
        load_policy,
        read_checkpoint_config,
        resolve_checkpoint_dir,
    )

    if windows < 1 or seeds < 1 or batch_size < 1 or best_of < 1:
        raise ConfigError(
            f"--windows, --seeds, --batch-size and --best-of must be >= 1, got {windows}, "
            f"{seeds}, {batch_size}, {best_of}"
        )
    directory = resolve_checkpoint_dir(checkpoint)
    config = read_checkpoint_config(directory)
    policy = load_policy(directory, calibration=False)  # a stale one is being replaced
    if getattr(policy, "name", None) != "ebt":
        raise ConfigError(f"{directory}: a {policy.name!r} policy has no energy to calibrate")
    if descent_steps is not None:
        policy.set_inference(descent_steps=descent_steps)  # ConfigError naming the field
    if best_of > 1:
        policy.set_engine(best_of=best_of)
    score = score or default_score(policy.config)
    if score not in STATISTICS:
        raise ConfigError(f"--score {score!r}: expected one of {STATISTICS}")
    if score == "spread" and best_of < 2:
        raise ConfigError("--score spread: needs --best-of K with K >= 2 (e.g. --best-of 4)")
    store = EpisodeStore.open(dataset, "r")
    if episodes is None:
        episodes = held_out_episodes(config["train_config"], store.n_episodes)
        if not episodes:
            raise DatasetError(
                f"{dataset}: training held out no episode of this store (val_fraction "
                f"{config['train_config'].get('val_fraction', 0)}); name some with --episodes"
            )
    bad = [e for e in episodes if not 0 <= e < store.n_episodes]
    if bad:
        raise DatasetError(f"{dataset}: --episodes {bad} not in 0..{store.n_episodes - 1}")
    window_set, indices = window_subset(policy, store, episodes, windows)
    energy, grad, spread = window_values(
        policy, window_set, indices, seeds=seeds, batch_size=batch_size
    )
    descent = policy.config.descent
    calibration = Calibration.from_values(
        energy,
        grad,
        score=score,
        descent_steps=descent.descent_steps,
        descent_min_grad=descent.descent_min_grad,
        descent_min_disp=descent.descent_min_disp,
        weights_sha256=weights_sha256(directory / WEIGHTS_NAME),
        best_of=best_of,
        spread=spread,
        info={
            "dataset": str(dataset),
            "store_episodes": store.n_episodes,
            "episodes": [int(e) for e in episodes],
            "windows": len(indices),
            "seeds": seeds,
            "chunks": int(energy.size),
        },
    )
    if write:
        write_calibration(calibration, directory)
    return calibration


def _raw_windows(dataset: Any, indices: Sequence[int], keys: Sequence[str]) -> dict:
    """key -> (len(indices), To, ...) observation windows ``indices`` of a WindowDataset."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, len(indices), 1024):
        items = [dataset[int(i)]["obs"] for i in indices[start : start + 1024]]
        for k in keys:
            parts[k].append(np.stack([np.asarray(item[k], np.float32) for item in items]))
    return {k: np.concatenate(v) for k, v in parts.items()}


def calibrate_novelty(
    checkpoint: str | Path,
    dataset: str | Path,
    *,
    windows: int = 2000,
    bank_windows: int = 20_000,
    episodes: Sequence[int] | None = None,
    deltas: bool = False,
    write: bool = True,
) -> Any:
    """Build (and by default write) the observation-novelty index of ``checkpoint``
    (:class:`~ebt_policy.policies.novelty.NoveltyIndex`, any policy with low-dim observations).

    The bank holds at most ``bank_windows`` windows evenly spaced over the episodes training
    used; the quantiles come from at most ``windows`` windows of the held-out ones (training's
    seeded split, or ``episodes``: then the bank is every other episode). ``deltas`` adds the
    frame-to-frame changes to the features, in units of their own range over the bank.

    Raises:
        ConfigError / DatasetError / CheckpointError: one line naming the flag, store or file.
    """
    from ebt_policy.datasets import EpisodeStore, WindowDataset, compute_stats
    from ebt_policy.policies.checkpoint import (
        load_policy,
        read_checkpoint_config,
        resolve_checkpoint_dir,
    )
    from ebt_policy.policies.novelty import (
        NoveltyIndex,
        delta_range,
        window_features,
        write_novelty,
    )

    if windows < 1 or bank_windows < 1:
        raise ConfigError(
            f"--windows and --novelty-windows must be >= 1, got {windows}, {bank_windows}"
        )
    directory = resolve_checkpoint_dir(checkpoint)
    config = read_checkpoint_config(directory)
    policy = load_policy(directory, calibration=False)
    keys = list(policy.low_dim_keys)
    if not keys:
        raise ConfigError(
            f"{directory}: --novelty needs low-dimensional observations; this policy reads "
            f"only images {list(policy.rgb_keys)}"
        )
    store = EpisodeStore.open(dataset, "r")
    missing = [k for k in keys if k not in store.keys]
    if missing:
        raise DatasetError(f"{dataset}: has no key {missing[0]!r} that {directory} reads")
    if episodes is None:
        episodes = held_out_episodes(config["train_config"], store.n_episodes)
        if not episodes:
            raise DatasetError(
                f"{dataset}: training held out no episode of this store (val_fraction "
                f"{config['train_config'].get('val_fraction', 0)}); name some with --episodes"
            )
    bad = [e for e in episodes if not 0 <= e < store.n_episodes]
    if bad:
        raise DatasetError(f"{dataset}: --episodes {bad} not in 0..{store.n_episodes - 1}")
    held = {int(e) for e in episodes}
    train = [e for e in range(store.n_episodes) if e not in held]
    if not train:
        raise DatasetError(f"{dataset}: no episode is left for the bank besides --episodes")
    stats = compute_stats(store, keys=keys, write=False)
    span = {
        k: np.maximum(np.asarray(stats[k]["max"]) - np.asarray(stats[k]["min"]), 1e-6) for k in keys
    }
    To = policy.n_obs_steps
    if deltas and To < 2:
        raise ConfigError(f"--novelty-deltas: needs windows of >= 2 frames; {directory} reads {To}")

    def subset(eps: list[int], n: int) -> dict:
        ds = WindowDataset(store, keys, n_obs_steps=To, horizon=policy.horizon, episodes=eps)
        idx = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
        return _raw_windows(ds, idx, keys)

    bank_raw = subset(train, bank_windows)
    delta_span = delta_range(bank_raw, span) if deltas else None
    bank = window_features(bank_raw, keys, span, delta_span)
    held_out = window_features(subset(sorted(held), windows), keys, span, delta_span)
    index = NoveltyIndex.build(
        keys,
        span,
        To,
        bank,
        held_out,
        info={
            "dataset": str(dataset),
            "store_episodes": store.n_episodes,
            "bank_episodes": len(train),
            "bank_windows": len(bank),
            "episodes": sorted(held),
            "windows": len(held_out),
        },
        delta_span=delta_span,
    )
    if write:
        write_novelty(index, directory)
    return index


@dataclass
class CalibrateArgs:
    """Measure the uncertainty calibration of an EBT checkpoint on held-out demonstrations."""

    checkpoint: Path
    """Run directory or checkpoint directory (calibration.json is written into the checkpoint)."""
    dataset: Path
    """The episode store the policy was trained on."""
    windows: int = 2000
    """At most this many held-out windows (evenly spaced)."""
    seeds: int = 1
    """Initial-noise draws per window."""
    score: str | None = None
    """energy (default), grad_norm or spread (needs --best-of >= 2): the statistic the
    uncertainty is the quantile of."""
    episodes: str | None = None
    """Comma-separated episode indices (default: the episodes training held out)."""
    descent_steps: int | None = None
    """Plan with this many descent steps (default: the checkpoint's); scores apply to it only."""
    best_of: int = 1
    """Plan best-of-K (as eval/deploy --best-of K); scores apply to that K only."""
    batch_size: int = 256
    novelty: bool = False
    """Also build the observation-novelty index (novelty.safetensors: the nearest training
    window's distance, calibrated on the held-out windows); the only step for policies without
    an energy (mse, diffusion)."""
    novelty_windows: int = 20_000
    """--novelty: at most this many training windows in the index (evenly spaced)."""
    novelty_deltas: bool = False
    """--novelty: compare the frame-to-frame changes too, each in units of its own range over
    the training windows (motion the frames' ranges hide: frozen frames, jitter)."""


def parse_episodes(text: str | None) -> list[int] | None:
    """``"3,17"`` -> [3, 17] (ConfigError naming the flag otherwise)."""
    if text is None:
        return None
    try:
        episodes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--episodes: expected comma-separated integers, got {text!r}") from None
    if not episodes:
        raise ConfigError("--episodes: expected at least one episode index")
    return episodes


def main(argv: list[str]) -> int:
    """Entry point of `ebt-policy calibrate`."""
    from ebt_policy.cli import parse_flags
    from ebt_policy.policies.checkpoint import read_checkpoint_config, resolve_checkpoint_dir

    args = parse_flags(CalibrateArgs, argv, prog="ebt-policy calibrate")
    directory = resolve_checkpoint_dir(args.checkpoint)
    episodes = parse_episodes(args.episodes)
    if args.novelty_deltas and not args.novelty:
        raise ConfigError("--novelty-deltas: needs --novelty")
    if args.novelty and args.novelty_windows < 1:  # refuse before anything is written
        raise ConfigError(f"--novelty-windows must be >= 1, got {args.novelty_windows}")
    name = read_checkpoint_config(directory)["policy"]["name"]
    if name != "ebt" and not args.novelty:
        raise ConfigError(
            f"{directory}: a {name!r} policy has no energy to calibrate (--novelty builds its "
            "observation-novelty index)"
        )
    index = None
    if args.novelty:  # built first: a refused index leaves calibration.json as it was
        index = calibrate_novelty(
            directory,
            args.dataset,
            windows=args.windows,
            bank_windows=args.novelty_windows,
            episodes=episodes,
            deltas=args.novelty_deltas,
            write=False,
        )
    if name == "ebt":
        _calibrate_energy(args, episodes)
    if index is not None:
        from ebt_policy.policies.novelty import LEVELS, write_novelty

        q, info = index.quantiles, index.info
        print(
            f"novelty index: {info['bank_windows']} training windows of "
            f"{info['bank_episodes']} episodes (keys {list(index.keys)}"
            f"{', with frame changes' if index.delta_span is not None else ''}), calibrated on "
            f"{info['windows']} held-out windows; nearest-window distance p1 "
            f"{q[LEVELS.index(0.01)]:.4g}  p50 {q[LEVELS.index(0.5)]:.4g}  p99 "
            f"{q[LEVELS.index(0.99)]:.4g}"
        )
        print(f"wrote {write_novelty(index, directory)}")
    return 0


def _calibrate_energy(args: CalibrateArgs, episodes: list[int] | None) -> None:
    from ebt_policy.policies.calibration import CALIBRATION_NAME
    from ebt_policy.policies.checkpoint import resolve_checkpoint_dir

    calibration = calibrate(
        args.checkpoint,
        args.dataset,
        windows=args.windows,
        seeds=args.seeds,
        score=args.score,
        episodes=episodes,
        descent_steps=args.descent_steps,
        best_of=args.best_of,
        batch_size=args.batch_size,
    )
    info = calibration.info
    print(
        f"calibrated on {info['chunks']} chunks ({info['windows']} windows of "
        f"{len(info['episodes'])} held-out episodes x {info['seeds']} seeds), score "
        f"{calibration.score}, {calibration.descent_steps} descent steps, best of "
        f"{calibration.best_of}"
    )
    for name in calibration.statistics:
        q = calibration.quantiles[name]
        print(f"  {name:<10} p1 {q[1]:.4g}  p50 {q[50]:.4g}  p99 {q[99]:.4g}")
    print(f"wrote {resolve_checkpoint_dir(args.checkpoint) / CALIBRATION_NAME}")
