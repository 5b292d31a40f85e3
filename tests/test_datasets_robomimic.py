"""robomimic HDF5 importer on small files written here with h5py, good and malformed."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from ebt_policy.cli import main
from ebt_policy.datasets import EpisodeStore, import_robomimic
from ebt_policy.errors import DatasetError

ENV_ARGS = {
    "env_name": "Lift",
    "type": 1,
    "env_kwargs": {
        "control_freq": 20,
        "robots": ["Panda"],
        "controller_configs": {"type": "OSC_POSE", "control_delta": True},
    },
}
DEMOS = {"demo_0": 4, "demo_2": 3, "demo_10": 5}  # numeric order: 0, 2, 10


def write_robomimic(path, env_args=ENV_ARGS, drop=None, env_args_raw=None) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = env_args_raw if env_args_raw is not None else json.dumps(env_args)
        for name, n in DEMOS.items():
            i = int(name.split("_")[1])
            demo = data.create_group(name)
            demo.create_dataset("actions", data=np.full((n, 7), i, np.float64))
            demo.create_dataset("rewards", data=np.zeros(n))
            demo.create_dataset("dones", data=np.zeros(n, np.int64))
            obs = demo.create_group("obs")
            obs.create_dataset("object", data=np.full((n, 10), i, np.float64))
            eef = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
            obs.create_dataset("robot0_eef_pos", data=eef)
            obs.create_dataset("agentview_image", data=np.full((n, 8, 8, 3), i, np.uint8))
            if drop is not None and drop[0] == name:
                del demo[drop[1]]
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_10"]))
        mask.create_dataset("valid", data=np.array([b"demo_2"]))


def test_import_robomimic(tmp_path):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src)
    out = tmp_path / "lift.zarr"
    store = import_robomimic(src, out, obs_keys=["robot0_eef_pos", "agentview_image"])
    assert store.keys == ["action", "agentview_image", "robot0_eef_pos"]
    assert store.episode_ends.tolist() == [4, 7, 12]
    # demos in numeric order: demo_0, demo_2, demo_10
    assert [store.get_episode(i)["action"][0, 0] for i in range(3)] == [0, 2, 10]
    assert (store.get_episode(2)["agentview_image"] == 10).all()
    ep = store.get_episode(1)
    np.testing.assert_array_equal(ep["robot0_eef_pos"], np.arange(9).reshape(3, 3))
    assert ep["action"].dtype == np.float32
    meta = store.metadata
    assert meta["task"] == {
        "name": "Lift",
        "env_kwargs": ENV_ARGS["env_kwargs"],
        "source": "robomimic",
    }
    assert meta["control_hz"] == 20
    assert meta["action_space"]["kind"] == "delta" and len(meta["action_space"]["low"]) == 7
    assert meta["obs_keys"] == {"low_dim": ["robot0_eef_pos"], "rgb": ["agentview_image"]}
    assert meta["robomimic"]["env_args"] == ENV_ARGS
    assert meta["splits"] == {"train": [0, 2], "valid": [1]}
    assert not os.path.exists(f"{out}.importing")


def test_import_default_keys_and_cli(tmp_path, capsys):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src)
    out = tmp_path / "all.zarr"
    assert main(["dataset", "import-robomimic", str(src), "--out", str(out)]) == 0
    assert "imported 3 episodes (12 steps" in capsys.readouterr().out
    store = EpisodeStore.open(out)
    assert store.keys == ["action", "agentview_image", "object", "robot0_eef_pos"]
    assert set(store.metadata["stats"]) == {"action", "object", "robot0_eef_pos"}
    # refuses to overwrite unless asked
    assert main(["dataset", "import-robomimic", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    args = ["dataset", "import-robomimic", str(src), "--out", str(out), "--obs-keys", "object"]
    assert main([*args, "--overwrite"]) == 0
    assert EpisodeStore.open(out).keys == ["action", "object"]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    assert main(["dataset", "import-robomimic", str(src), "--out", str(photos), "--overwrite"]) == 2
    assert "not a zarr store" in capsys.readouterr().err
    assert (photos / "a.jpg").exists()


@pytest.mark.parametrize(
    ("kwargs", "obs_keys", "match"),
    [
        ({"drop": ("demo_2", "obs/robot0_eef_pos")}, None, "'data/demo_2/obs/robot0_eef_pos'"),
        ({"drop": ("demo_10", "actions")}, None, "'data/demo_10/actions'"),
        ({}, ["nope"], "'data/demo_0/obs/nope'"),
        ({"env_args_raw": "{not json"}, None, "env_args is not valid JSON"),
        ({"env_args": {"env_kwargs": {}}}, None, "env_args lacks key 'env_name'"),
    ],
    ids=["missing-obs-key", "missing-actions", "unknown-obs-key", "bad-json", "no-env-name"],
)
def test_malformed_robomimic(tmp_path, capsys, kwargs, obs_keys, match):
    src = tmp_path / "bad.hdf5"
    write_robomimic(src, **kwargs)
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=match) as info:
        import_robomimic(src, out, obs_keys=obs_keys)
    assert str(src) in str(info.value)
    assert not out.exists() and not os.path.exists(f"{out}.importing")  # nothing half-written
    argv = ["dataset", "import-robomimic", str(src), "--out", str(out)]
    if obs_keys:
        argv += ["--obs-keys", *obs_keys]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(src) in err[0]


def test_not_hdf5(tmp_path):
    bad = tmp_path / "x.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        import_robomimic(bad, tmp_path / "o.zarr")
    with h5py.File(tmp_path / "empty.hdf5", "w"):
        pass
    with pytest.raises(DatasetError, match="missing group 'data'"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "o.zarr")
