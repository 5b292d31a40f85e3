"""Window sampler at episode edges, episode split, DataLoader workers, lazy vs in-memory reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ebt_policy.datasets import EpisodeStore, WindowDataset, split_episodes
from ebt_policy.errors import ConfigError, DatasetError

LENGTHS = [3, 5, 4]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Episodes whose values encode (episode, step): action[t] = [100 e + t, -t]."""
    path = tmp_path_factory.mktemp("sampler") / "demos.zarr"
    store = EpisodeStore.create(path, {"task": {"name": "lift"}})
    for e, n in enumerate(LENGTHS):
        t = np.arange(n)
        store.add_episode(
            {
                "action": np.stack([100 * e + t, -t], axis=1).astype(np.float32),
                "state": (100 * e + t)[:, None].astype(np.float64),
                "cam_image": np.broadcast_to(
                    (10 * e + t).astype(np.uint8)[:, None, None, None], (n, 2, 2, 3)
                ).copy(),
            }
        )
    return path


def _expected(e: int, idx: list[int]) -> list[float]:
    return [100.0 * e + i for i in idx]


@pytest.mark.parametrize("in_memory", [True, False])
def test_windows_at_both_edges(store_path, in_memory):
    ds = WindowDataset(
        store_path, ["state", "cam_image"], n_obs_steps=2, horizon=4, in_memory=in_memory
    )
    assert ds.in_memory is in_memory
    assert len(ds) == sum(LENGTHS)

    # episode 0 (length 3), t = 0: obs t-1..t -> [0, 0]; chunk t-1..t+2 -> [0, 0, 1, 2]
    item = ds[0]
    assert item["obs"]["state"][:, 0].tolist() == _expected(0, [0, 0])
    assert item["obs_pad"].tolist() == [True, False]
    assert item["action"][:, 0].tolist() == _expected(0, [0, 0, 1, 2])
    assert item["action"][:, 1].tolist() == [0, 0, -1, -2]
    assert item["action_pad"].tolist() == [True, False, False, False]
    assert item["obs"]["cam_image"][:, 0, 0, 0].tolist() == [0, 0]

    # episode 0, t = 2 (last step): obs [1, 2]; chunk 1..4 -> [1, 2, 2, 2]
    item = ds[2]
    assert item["obs"]["state"][:, 0].tolist() == _expected(0, [1, 2])
    assert item["obs_pad"].tolist() == [False, False]
    assert item["action"][:, 0].tolist() == _expected(0, [1, 2, 2, 2])
    assert item["action_pad"].tolist() == [False, False, True, True]

    # episode 1 (length 5), t = 0 is sample 3; t = 2 is interior: chunk 1..4, no padding
    item = ds[3]
    assert item["action"][:, 0].tolist() == _expected(1, [0, 0, 1, 2])
    assert item["obs"]["cam_image"][:, 0, 0, 0].tolist() == [10, 10]
    item = ds[5]
    assert item["obs"]["state"][:, 0].tolist() == _expected(1, [1, 2])
    assert item["action"][:, 0].tolist() == _expected(1, [1, 2, 3, 4])
    assert not item["action_pad"].any() and not item["obs_pad"].any()
    # episode 1, t = 4 (last): chunk 3..6 -> [3, 4, 4, 4]
    item = ds[7]
    assert item["action"][:, 0].tolist() == _expected(1, [3, 4, 4, 4])
    assert item["action_pad"].tolist() == [False, False, True, True]
    assert item["obs"]["cam_image"][:, 0, 0, 0].tolist() == [13, 14]

    # types: actions and low-dim float32, images uint8 HWC, masks bool
    assert item["action"].dtype == torch.float32 and item["action"].shape == (4, 2)
    assert item["obs"]["state"].dtype == torch.float32 and item["obs"]["state"].shape == (2, 1)
    assert item["obs"]["cam_image"].dtype == torch.uint8
    assert item["obs"]["cam_image"].shape == (2, 2, 2, 3)
    assert item["obs_pad"].dtype == torch.bool
    assert ds.locate(7) == (1, 4) and ds.locate(-1) == (2, 3)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_longer_history_pads_several_frames(store_path):
    ds = WindowDataset(store_path, ["state"], n_obs_steps=3, horizon=6, episodes=[2])
    assert len(ds) == 4
    item = ds[0]  # obs -2..0, chunk -2..3
    assert item["obs"]["state"][:, 0].tolist() == _expected(2, [0, 0, 0])
    assert item["obs_pad"].tolist() == [True, True, False]
    assert item["action"][:, 0].tolist() == _expected(2, [0, 0, 0, 1, 2, 3])
    assert item["action_pad"].tolist() == [True, True, False, False, False, False]
    item = ds[3]  # t=3: obs 1..3, chunk 1..6
    assert item["action"][:, 0].tolist() == _expected(2, [1, 2, 3, 3, 3, 3])
    assert item["action_pad"].tolist() == [False, False, False, True, True, True]


def test_episode_subset_and_memory_limit(store_path):
    ds = WindowDataset(store_path, ["cam_image"], 2, 4, episodes=[2, 0], memory_limit_bytes=10)
    assert not ds.in_memory  # auto: does not fit in 10 bytes
    assert len(ds) == 4 + 3
    assert ds.locate(0) == (2, 0) and ds.locate(4) == (0, 0)
    assert ds[4]["action"][:, 0].tolist() == _expected(0, [0, 0, 1, 2])
    assert ds[1]["obs"]["cam_image"][:, 0, 0, 0].tolist() == [20, 21]
    assert WindowDataset(store_path, ["cam_image"], 2, 4).in_memory  # default limit: fits
    with pytest.raises(DatasetError, match="episode index 3 out of range"):
        WindowDataset(store_path, ["state"], episodes=[3])
    with pytest.raises(DatasetError, match="unknown observation key 'nope'"):
        WindowDataset(store_path, ["nope"])
    with pytest.raises(ConfigError, match="horizon"):
        WindowDataset(store_path, ["state"], n_obs_steps=4, horizon=2)


def test_dataloader_workers_read_lazily(store_path):
    ds = WindowDataset(store_path, ["state", "cam_image"], 2, 4, in_memory=False)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    action = torch.cat([b["action"] for b in batches])
    images = torch.cat([b["obs"]["cam_image"] for b in batches])
    assert action.shape == (len(ds), 4, 2)
    assert images.shape == (len(ds), 2, 2, 2, 3)
    for i in (0, 5, 11):
        torch.testing.assert_close(action[i], ds[i]["action"])
        torch.testing.assert_close(images[i], ds[i]["obs"]["cam_image"])


def test_split_episodes():
    train, val = split_episodes(20, val_fraction=0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert sorted(train + val) == list(range(20))
    assert train == sorted(train) and val == sorted(val)
    assert split_episodes(20, 0.2, seed=0) == (train, val)  # fixed seed: same split
    assert split_episodes(20, 0.2, seed=1) != (train, val)
    assert split_episodes(3, 0.1, seed=0)[1] != []  # at least one validation episode
    assert split_episodes(1, 0.5) == ([0], [])  # training keeps at least one
    assert split_episodes(5, 0.0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ConfigError, match="val_fraction"):
        split_episodes(5, 1.0)


def test_windows_from_diffusion_policy_format2_store(tmp_path):
    import zarr

    path = str(tmp_path / "pusht.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.create_array("data/action", shape=(5, 2), chunks=(5, 2), dtype="float32")[:] = np.arange(
        10
    ).reshape(5, 2)
    root.create_array("data/img", shape=(5, 4, 4, 3), chunks=(1, 4, 4, 3), dtype="float32")[:] = 1
    root.create_array("meta/episode_ends", shape=(2,), chunks=(2,), dtype="int64")[:] = [2, 5]
    ds = WindowDataset(path, ["img"], n_obs_steps=2, horizon=3, in_memory=False)
    assert ds.rgb_keys == ["img"] and len(ds) == 5
    item = ds[2]  # episode 1, t = 0
    assert item["action"][:, 0].tolist() == [4.0, 4.0, 6.0]
    assert item["action_pad"].tolist() == [True, False, False]
    assert item["obs"]["img"].shape == (2, 4, 4, 3)
