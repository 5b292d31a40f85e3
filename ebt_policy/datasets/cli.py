"""``ebt-policy dataset info`` and ``ebt-policy dataset import-robomimic``."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import numpy as np
import tyro

from ebt_policy.datasets.store import ACTION_KEY, EpisodeStore


def summarize(store: EpisodeStore) -> dict[str, Any]:
    """Everything ``dataset info`` shows, as JSON-ready values."""
    keys = {}
    for key in store.keys:
        arr = store.array(key)
        keys[key] = {
            "shape": list(store.key_shape(key)),
            "dtype": str(store.key_dtype(key)),
            "type": "action" if key == ACTION_KEY else ("rgb" if store.is_rgb(key) else "low_dim"),
            "chunk_steps": int(arr.chunks[0]),
        }
    action_min = action_max = None
    if ACTION_KEY in store.keys and store.n_steps:
        lo = hi = None
        for _, block in store.iter_blocks(ACTION_KEY):
            flat = block.reshape(len(block), -1)
            bmin, bmax = flat.min(axis=0), flat.max(axis=0)
            lo = bmin if lo is None else np.minimum(lo, bmin)
            hi = bmax if hi is None else np.maximum(hi, bmax)
        action_min, action_max = lo.tolist(), hi.tolist()
    lengths = store.episode_lengths()
    return {
        "path": store.path,
        "zarr_format": store.zarr_format,
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "episode_length": (
            {
                "min": int(lengths.min()),
                "mean": float(lengths.mean()),
                "max": int(lengths.max()),
            }
            if len(lengths)
            else None
        ),
        "uncommitted_steps": store.uncommitted_steps,
        "keys": keys,
        "action_min": action_min,
        "action_max": action_max,
        "metadata": store.metadata,
    }


def _print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=max(100, Console().width))
    lengths = info["episode_length"]
    console.print(
        f"[bold]{info['path']}[/bold] (zarr format {info['zarr_format']}): "
        f"{info['episodes']} episodes, {info['steps']} steps"
        + (
            f" (length min {lengths['min']}, mean {lengths['mean']:.1f}, max {lengths['max']})"
            if lengths
            else ""
        ),
        soft_wrap=True,
    )
    if info["uncommitted_steps"]:
        console.print(
            f"{info['uncommitted_steps']} uncommitted steps past the last episode "
            "(left by an interrupted writer; ignored, removed on the next append)"
        )
    table = Table(title="keys")
    for col in ("key", "type", "shape", "dtype", "steps/chunk"):
        table.add_column(col)
    for key, k in info["keys"].items():
        table.add_row(key, k["type"], str(tuple(k["shape"])), k["dtype"], str(k["chunk_steps"]))
    console.print(table)
    if info["action_min"] is not None:
        names = (info["metadata"].get("action_space") or {}).get("names") or []
        if len(names) != len(info["action_min"]):
            names = [str(i) for i in range(len(info["action_min"]))]
        actions = Table(title="action range")
        for col in ("dim", "name", "min", "max"):
            actions.add_column(col)
        for i, (name, lo, hi) in enumerate(
            zip(names, info["action_min"], info["action_max"], strict=True)
        ):
            actions.add_row(str(i), name, f"{lo:.6g}", f"{hi:.6g}")
        console.print(actions)
    metadata = dict(info["metadata"])
    stats = metadata.pop("stats", None)
    console.print("[bold]metadata[/bold] (long lists shortened; --json shows everything)")
    from rich.pretty import Pretty

    console.print(Pretty(_shorten_lists(metadata)))
    if stats:
        console.print(f"stats: computed for keys {sorted(stats)} (shown with --json)")


def _shorten_lists(value: Any, keep: int = 8) -> Any:
    """A copy of ``value`` whose lists longer than ``keep`` show their ends and their length."""
    if isinstance(value, dict):
        return {k: _shorten_lists(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) <= keep:
            return [_shorten_lists(v, keep) for v in value]
        head = [_shorten_lists(v, keep) for v in value[: keep - 2]]
        return [*head, f"... {len(value)} items in all ...", _shorten_lists(value[-1], keep)]
    return value


@dataclasses.dataclass
class InfoArgs:
    """Summarise an episode store: episodes, steps, keys, action ranges, metadata."""

    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="PATH")]]
    """Store location: a directory, a .zip file, or an fsspec URL."""
    json: bool = False
    """Print the summary as JSON."""
    verify: bool = False
    """Also read every committed chunk of every key (images included): fails on a chunk that
    cannot be decoded or holds NaN/Inf. Opening alone checks metadata and that no chunk file is
    missing, without reading image data."""


def info_main(argv: list[str]) -> int:
    """``ebt-policy dataset info PATH [--json] [--verify]``."""
    args = tyro.cli(InfoArgs, args=argv, prog="ebt-policy dataset info")
    store = EpisodeStore.open(args.path, "r")
    try:
        if args.verify:
            store.verify()
        info = summarize(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0


@dataclasses.dataclass
class ImportRobomimicArgs:
    """Convert a robomimic HDF5 file into an episode store."""

    hdf5: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="HDF5")]]
    """robomimic HDF5 file (data/demo_<i>/{actions, obs/<key>}, data attr env_args)."""
    out: Annotated[str, tyro.conf.arg(metavar="PATH")]
    """Output store directory."""
    obs_keys: tuple[str, ...] = ()
    """Observation keys to import (default: all keys of the first demo)."""
    overwrite: bool = False
    """Replace an existing store at --out."""
    stats: bool = True
    """Compute normalisation statistics after the import."""


def import_robomimic_main(argv: list[str]) -> int:
    """``ebt-policy dataset import-robomimic HDF5 --out PATH [--obs-keys ...]``."""
    from ebt_policy.datasets.robomimic import import_robomimic
    from ebt_policy.datasets.stats import compute_stats
    from ebt_policy.utils.paths import check_output_path

    args = tyro.cli(ImportRobomimicArgs, args=argv, prog="ebt-policy dataset import-robomimic")
    check_output_path(args.out, "store", "--out")  # before reading the HDF5 file
    store = import_robomimic(
        args.hdf5, args.out, obs_keys=list(args.obs_keys) or None, overwrite=args.overwrite
    )
    if args.stats:
        compute_stats(store)
    print(
        f"imported {store.n_episodes} episodes ({store.n_steps} steps, keys {store.keys}) "
        f"from {args.hdf5} into {args.out}"
    )
    return 0
