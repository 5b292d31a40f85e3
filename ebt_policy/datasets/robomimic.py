"""Import a robomimic HDF5 dataset into an episode store.

robomimic layout::

    data/                    attrs: env_args (JSON: env_name, type, env_kwargs)
      demo_<i>/actions       (T, Da)
      demo_<i>/obs/<key>     (T, ...)      images uint8 HWC, named *_image
      demo_<i>/rewards, dones
    mask/<split>             demo names, e.g. b"demo_0"

Demos are imported in numeric order (demo_2 before demo_10); ``actions`` becomes ``action``,
observation keys keep their names. Rewards and dones are not imported (the store holds actions and
observations). The env_args go into the metadata (``task`` for rebuilding the environment, the
full JSON under ``robomimic.env_args``) and ``mask/<split>`` into ``splits`` as episode indices.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.datasets.layout import is_rgb_key
from ebt_policy.datasets.store import EpisodeStore
from ebt_policy.datasets.zarr_io import is_local
from ebt_policy.errors import DatasetError

ROBOSUITE_DEFAULT_HZ = 20
_DEMO = re.compile(r"^demo_(\d+)$")


def _find(tree: Any, key: str) -> Any:
    """First value of ``key`` anywhere in nested dicts/lists (robosuite controller configs nest)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        children = tree.values()
    elif isinstance(tree, list):
        children = tree
    else:
        return None
    for child in children:
        found = _find(child, key)
        if found is not None:
            return found
    return None


def _env_args(f: Any, path: str) -> dict[str, Any]:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        raise DatasetError(f"{path}: missing attribute 'env_args' on group 'data'")
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        env_args = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: attribute 'data' env_args is not valid JSON ({exc})") from exc
    if not isinstance(env_args, dict) or "env_name" not in env_args:
        raise DatasetError(f"{path}: attribute 'data' env_args lacks key 'env_name'")
    return env_args


def _demo_names(f: Any, path: str) -> list[str]:
    names = []
    for name in f["data"]:
        m = _DEMO.match(name)
        if m is None:
            raise DatasetError(f"{path}: unexpected group 'data/{name}' (expected demo_<i>)")
        names.append((int(m.group(1)), name))
    if not names:
        raise DatasetError(f"{path}: group 'data' holds no demos")
    return [name for _, name in sorted(names)]


def robomimic_metadata(
    env_args: dict[str, Any], action_dim: int, obs_keys: Sequence[str]
) -> dict[str, Any]:
    """Store metadata from robomimic ``env_args``."""
    env_kwargs = dict(env_args.get("env_kwargs") or {})
    control_delta = _find(env_kwargs.get("controller_configs"), "control_delta")
    return {
        "task": {
            "name": env_args["env_name"],
            "env_kwargs": env_kwargs,
            "source": "robomimic",
        },
        "control_hz": env_kwargs.get("control_freq", ROBOSUITE_DEFAULT_HZ),
        "action_space": {
            # robosuite controllers take actions in [-1, 1] per dimension
            "kind": "absolute" if control_delta is False else "delta",
            "low": [-1.0] * action_dim,
            "high": [1.0] * action_dim,
            "names": [f"a{i}" for i in range(action_dim)],
        },
        "obs_keys": {
            "low_dim": [k for k in obs_keys if not is_rgb_key(k)],
            "rgb": [k for k in obs_keys if is_rgb_key(k)],
        },
        "robomimic": {"env_args": env_args},
    }


def import_robomimic(
    hdf5_path: str | os.PathLike,
    out: str | os.PathLike,
    obs_keys: Sequence[str] | None = None,
    overwrite: bool = False,
) -> EpisodeStore:
    """Convert a robomimic HDF5 file into an episode store at ``out``; returns it opened "r".

    ``obs_keys`` defaults to every observation key of the first demo. For a local ``out`` the
    store is written beside it under a temporary name and renamed when complete, so a failed or
    interrupted import never leaves a partial store at ``out``.
    """
    import h5py

    path, out = os.fspath(hdf5_path), os.fspath(out)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    if os.path.exists(out):
        if not overwrite:
            raise DatasetError(f"{out}: already exists (pass overwrite to replace it)")
        if not any(os.path.exists(os.path.join(out, m)) for m in ("zarr.json", ".zgroup")):
            raise DatasetError(f"{out}: exists and is not a zarr store; refusing to overwrite it")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing group 'data'")
        env_args = _env_args(f, path)
        demos = _demo_names(f, path)
        first = f["data"][demos[0]]
        if "obs" not in first:
            raise DatasetError(f"{path}: missing group 'data/{demos[0]}/obs'")
        keys = sorted(first["obs"]) if obs_keys is None else list(obs_keys)
        if "actions" not in first:
            raise DatasetError(f"{path}: missing dataset 'data/{demos[0]}/actions'")
        action_dim = int(first["actions"].shape[-1])
        metadata = robomimic_metadata(env_args, action_dim, keys)
        index = {name: i for i, name in enumerate(demos)}
        if "mask" in f:
            splits = {}
            for split in f["mask"]:
                members = [m.decode() if isinstance(m, bytes) else str(m) for m in f["mask"][split]]
                unknown = [m for m in members if m not in index]
                if unknown:
                    raise DatasetError(
                        f"{path}: 'mask/{split}' names demo {unknown[0]!r} not in 'data'"
                    )
                splits[split] = sorted(index[m] for m in members)
            metadata["splits"] = splits

        local = is_local(out)
        target = f"{out.rstrip('/')}.importing" if local else out
        if local and os.path.exists(target):
            shutil.rmtree(target)
        store = EpisodeStore.create(target, metadata, overwrite=overwrite)
        try:
            for name in demos:
                demo = f["data"][name]
                episode = {}
                for key in ["actions", *[f"obs/{k}" for k in keys]]:
                    if key not in demo:
                        raise DatasetError(f"{path}: missing dataset 'data/{name}/{key}'")
                    value = np.asarray(demo[key])
                    if value.dtype == np.float64:
                        value = value.astype(np.float32)  # robomimic stores float64; halve it
                    episode["action" if key == "actions" else key[4:]] = value
                try:
                    store.add_episode(episode)
                except DatasetError as exc:
                    raise DatasetError(f"{path}: demo 'data/{name}': {exc}") from exc
        except BaseException:
            if local:
                shutil.rmtree(target, ignore_errors=True)
            raise
    if local:
        if os.path.exists(out):
            shutil.rmtree(out)
        Path(target).rename(out)
    return EpisodeStore.open(out, "r", check_values=False)
