"""Episode store: round trip, layout, appending, crash safety, and validation on append."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from ebt_policy.datasets import EpisodeStore
from ebt_policy.errors import DatasetError

METADATA = {
    "task": {"name": "lift", "env_kwargs": {"horizon": 50}},
    "control_hz": 20,
    "action_space": {"kind": "delta", "low": [-1.0] * 3, "high": [1.0] * 3, "names": list("xyz")},
    "obs_keys": {"low_dim": ["eef_pos"], "rgb": ["agentview_image"]},
}


def make_episode(length: int, seed: int, images: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep = {
        "action": rng.uniform(-1, 1, (length, 3)).astype(np.float32),
        "eef_pos": rng.normal(size=(length, 4)).astype(np.float32),
    }
    if images:
        ep["agentview_image"] = rng.integers(0, 256, (length, 6, 5, 3), dtype=np.uint8)
    return ep


def test_round_trip(tmp_path):
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, METADATA)
    episodes = [make_episode(n, seed=i) for i, n in enumerate([5, 1, 9])]
    for i, ep in enumerate(episodes):
        assert store.add_episode(ep) == i

    store = EpisodeStore.open(path)
    assert store.n_episodes == 3 and len(store) == 3
    assert store.n_steps == 15
    assert store.episode_ends.dtype == np.int64
    assert store.episode_ends.tolist() == [5, 6, 15]
    assert store.keys == ["action", "agentview_image", "eef_pos"]
    for i, ep in enumerate(episodes):
        got = store.get_episode(i)
        assert set(got) == set(ep)
        for key in ep:
            assert got[key].dtype == ep[key].dtype
            np.testing.assert_array_equal(got[key], ep[key])
    meta = store.metadata
    for key, value in METADATA.items():
        assert meta[key] == value
    assert meta["schema_version"] == 1
    assert meta["created_by"].startswith("ebt-policy ")
    assert store.zarr_format == 3
    assert store.shape_meta(["eef_pos", "agentview_image"]) == {
        "obs": {
            "eef_pos": {"shape": [4], "type": "low_dim"},
            "agentview_image": {"shape": [6, 5, 3], "type": "rgb"},
        },
        "action": {"shape": [3]},
    }
    with pytest.raises(DatasetError, match="'nope'"):
        store.shape_meta(["nope"])


def test_layout_chunks_and_compression(tmp_path):
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, METADATA)
    store.add_episode(make_episode(4, seed=0))
    # Diffusion Policy layout, readable with plain zarr
    root = zarr.open_group(str(path), mode="r")
    assert root["meta/episode_ends"][:].tolist() == [4]
    assert root["meta/episode_ends"].dtype == np.int64
    images = root["data/agentview_image"]
    assert images.chunks == (1, 6, 5, 3)  # one frame per chunk
    low_dim = root["data/eef_pos"]
    assert low_dim.chunks[1:] == (4,)  # chunked along time only
    assert 2**20 <= low_dim.chunks[0] * 4 * 4 <= 2 * 2**20  # ~1-2 MB per chunk
    codec = low_dim.compressors[0]
    assert type(codec).__name__ == "BloscCodec" and codec.cname.value == "zstd"


def test_create_refuses_existing_and_overwrites(tmp_path):
    path = tmp_path / "demos.zarr"
    EpisodeStore.create(path, METADATA).add_episode(make_episode(3, seed=0))
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeStore.create(path, METADATA)
    store = EpisodeStore.create(path, {"task": {"name": "can"}}, overwrite=True)
    assert store.n_episodes == 0
    assert EpisodeStore.open(path).metadata["task"] == {"name": "can"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]  # no temp leftovers
    # never deletes something that is not a zarr store
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a zarr store"):
        EpisodeStore.create(other, METADATA, overwrite=True)
    assert (other / "a.jpg").exists()
    with pytest.raises(DatasetError, match="'action_space'"):
        EpisodeStore.create(tmp_path / "x.zarr", {"action_space": {"kind": "velocity"}})


def test_append_after_reopen_and_update_metadata(tmp_path):
    path = tmp_path / "demos.zarr"
    EpisodeStore.create(path, METADATA).add_episode(make_episode(3, seed=0))
    store = EpisodeStore.open(path, mode="a")
    store.add_episode(make_episode(2, seed=1))
    store.update_metadata(note="hello", control_hz=10)
    reread = EpisodeStore.open(path)
    assert reread.episode_ends.tolist() == [3, 5]
    assert reread.metadata["note"] == "hello" and reread.metadata["control_hz"] == 10
    with pytest.raises(DatasetError, match="read-only"):
        reread.add_episode(make_episode(2, seed=2))


def test_format2_store_written_by_zarr_reads_and_appends(tmp_path):
    path = str(tmp_path / "dp.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=2)
    action = root.create_array("data/action", shape=(7, 2), chunks=(4, 2), dtype="float32")
    action[:] = np.arange(14, dtype=np.float32).reshape(7, 2)
    img = root.create_array("data/img", shape=(7, 4, 4, 3), chunks=(1, 4, 4, 3), dtype="uint8")
    img[:] = np.arange(7, dtype=np.uint8)[:, None, None, None]
    ends = root.create_array("meta/episode_ends", shape=(2,), chunks=(2,), dtype="int64")
    ends[:] = [3, 7]

    store = EpisodeStore.open(path)
    assert store.zarr_format == 2 and store.episode_ends.tolist() == [3, 7]
    assert store.get_episode(1)["action"].tolist() == [[6, 7], [8, 9], [10, 11], [12, 13]]
    assert store.is_rgb("img")
    store = EpisodeStore.open(path, mode="a")
    store.add_episode({"action": np.ones((2, 2), np.float32), "img": np.zeros((2, 4, 4, 3), "u1")})
    assert EpisodeStore.open(path).episode_ends.tolist() == [3, 7, 9]
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 2


def test_zip_store_reads(tmp_path):
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, METADATA)
    ep = make_episode(4, seed=3)
    store.add_episode(ep)
    archive = shutil.make_archive(str(tmp_path / "demos"), "zip", path)
    with EpisodeStore.open(archive) as zipped:
        np.testing.assert_array_equal(zipped.get_episode(0)["eef_pos"], ep["eef_pos"])
    with pytest.raises(DatasetError, match="read-only"):
        EpisodeStore.open(archive, mode="a")


# A writer that is killed (SIGKILL) while adding its 4th episode, at a chosen stage.
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from ebt_policy.datasets import store as store_mod

    path, stage = sys.argv[1], sys.argv[2]
    s = store_mod.EpisodeStore.create(path, {"task": {"name": "lift"}})
    real_write = store_mod._write_beyond
    calls = []

    def write_then_hang(arr, start, values):
        calls.append(arr.path)
        if s.n_episodes == 3:
            ends = arr.path.endswith("episode_ends")
            # "data": some rows of the new episode written, shapes unchanged;
            # "commit": every data array grown, episode_ends not yet
            if (stage == "data" and len(calls) > 3 * 4 + 1) or (stage == "commit" and ends):
                print("READY", flush=True)
                time.sleep(60)
        real_write(arr, start, values)

    store_mod._write_beyond = write_then_hang
    for i in range(4):
        rng = np.random.default_rng(i)
        s.add_episode({
            "action": np.full((5 + i, 2), i, np.float32),
            "obs": rng.normal(size=(5 + i, 3)).astype(np.float32),
            "front_image": np.full((5 + i, 4, 4, 3), i, np.uint8),
        })
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("stage", ["data", "commit"])
def test_sigkill_mid_episode_leaves_valid_store(tmp_path, stage):
    path = str(tmp_path / "demos.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, stage], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "READY", f"writer did not reach the kill point: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = EpisodeStore.open(path)  # valid for reading as left
    assert store.episode_ends.tolist() == [5, 11, 18]
    if stage == "commit":
        assert store.uncommitted_steps == 8
    for i in range(3):
        assert (store.get_episode(i)["action"] == i).all()
        assert (store.get_episode(i)["front_image"] == i).all()

    store = EpisodeStore.open(path, mode="a")  # cuts the unfinished rows, appending continues
    assert store.uncommitted_steps == 0
    store.add_episode(
        {
            "action": np.full((2, 2), 7, np.float32),
            "obs": np.zeros((2, 3), np.float32),
            "front_image": np.full((2, 4, 4, 3), 7, np.uint8),
        }
    )
    store = EpisodeStore.open(path)
    assert store.episode_ends.tolist() == [5, 11, 18, 20]
    assert all(store.array(k).shape[0] == 20 for k in store.keys)
    assert (store.get_episode(3)["action"] == 7).all()
    assert (store.get_episode(3)["front_image"] == 7).all()
    assert (store.get_episode(2)["action"] == 2).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ep: ep.pop("eef_pos"), r"episode 1 lacks key 'eef_pos'"),
        (lambda ep: ep.update(extra=np.zeros((4, 1))), r"episode 1 has key 'extra'"),
        (
            lambda ep: ep.update(eef_pos=np.zeros((4, 5), np.float32)),
            r"episode 1 key 'eef_pos': per-step shape \(5,\), store has \(4,\)",
        ),
        (
            lambda ep: ep.update(agentview_image=np.zeros((4, 6, 5, 3), np.float32)),
            r"episode 1 key 'agentview_image': dtype float32, store has uint8",
        ),
        (
            lambda ep: ep.update(eef_pos=np.zeros((3, 4), np.float32)),
            r"episode 1 key 'eef_pos' has 3 steps, 'action' has 4",
        ),
        (
            lambda ep: ep["action"].__setitem__((2, 1), np.nan),
            r"key 'data/action': non-finite value nan at episode 1 step 2, index \(1,\)",
        ),
        (
            lambda ep: ep["eef_pos"].__setitem__((3, 0), np.inf),
            r"key 'data/eef_pos': non-finite value inf at episode 1 step 3, index \(0,\)",
        ),
        (
            lambda ep: [ep.__setitem__(k, v[:0]) for k, v in list(ep.items())],
            r"episode 1 is empty",
        ),
    ],
    ids=["missing", "extra", "shape", "dtype", "length", "nan-action", "inf-obs", "empty"],
)
def test_add_episode_validation(tmp_path, change, match):
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, METADATA)
    store.add_episode(make_episode(3, seed=0))
    ep = make_episode(4, seed=1)
    change(ep)
    with pytest.raises(DatasetError, match=match) as info:
        store.add_episode(ep)
    assert str(path) in str(info.value)
    # nothing was committed, and the store still takes a good episode
    assert EpisodeStore.open(path).n_episodes == 1
    store.add_episode(make_episode(2, seed=2))
    assert EpisodeStore.open(path).episode_ends.tolist() == [3, 5]


def test_first_episode_validation(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", {})
    with pytest.raises(DatasetError, match="lacks key 'action'"):
        store.add_episode({"obs": np.zeros((3, 2))})
    with pytest.raises(DatasetError, match="images must be uint8"):
        store.add_episode({"action": np.zeros((3, 2)), "cam_image": np.zeros((3, 4, 4, 3))})
    with pytest.raises(DatasetError, match="schema_version"):
        EpisodeStore.create(tmp_path / "t.zarr", {"schema_version": 2})


def test_fsspec_url_store():
    url = f"memory://ebt-test-{os.getpid()}/demos.zarr"
    store = EpisodeStore.create(url, METADATA)
    ep = make_episode(3, seed=4, images=False)
    store.add_episode(ep)
    reread = EpisodeStore.open(url)
    assert reread.episode_ends.tolist() == [3]
    np.testing.assert_array_equal(reread.get_episode(0)["action"], ep["action"])
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeStore.create(url, METADATA)
