"""Statistics against numpy, stored in metadata; Normalizer round trip, constant dims, images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebt_policy.datasets import (
    EpisodeStore,
    Normalizer,
    compute_stats,
    stats_from_metadata,
)
from ebt_policy.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("stats") / "demos.zarr"
    store = EpisodeStore.create(path, {"task": {"name": "lift"}})
    for n in (40, 1, 75):
        action = rng.normal(size=(n, 3)).astype(np.float32) * [1.0, 5.0, 0.1]
        action[:, 2] = 0.5  # a constant dimension (e.g. an unused gripper)
        store.add_episode(
            {
                "action": action.astype(np.float32),
                "state": rng.uniform(-3, 7, size=(n, 2, 2)),
                "cam_image": rng.integers(0, 256, (n, 3, 2, 3), dtype=np.uint8),
            }
        )
    return store


def _numpy_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    return {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "q01": np.quantile(x, 0.01, axis=0),
        "q99": np.quantile(x, 0.99, axis=0),
    }


def test_stats_match_numpy_and_are_stored(store):
    stats = compute_stats(store)
    assert set(stats) == {"action", "state"}  # images only when asked for
    for key in ("action", "state"):
        want = _numpy_stats(store.read(key))
        for name, value in want.items():
            np.testing.assert_allclose(stats[key][name], value, rtol=1e-10, atol=1e-12)
    assert stats["state"]["mean"].shape == (2, 2)

    meta = EpisodeStore.open(store.path).metadata
    assert meta["stats"]["action"]["count"] == 116
    assert meta["stats"]["action"]["exact_quantiles"] is True
    loaded = stats_from_metadata(meta)
    for name in ("min", "max", "mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(loaded["state"][name], stats["state"][name])


def test_stats_streaming_blocks_reservoir_and_images(store, monkeypatch):
    # tiny blocks: many streaming updates must give the same moments
    real = store.iter_blocks
    monkeypatch.setattr(store, "iter_blocks", lambda key, block_bytes=0: real(key, 1))
    want = _numpy_stats(store.read("state"))
    before = EpisodeStore.open(store.path).metadata
    small = compute_stats(store, keys=["state", "cam_image"], write=False, reservoir=50)
    for name in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(small["state"][name], want[name], rtol=1e-10)
    # quantiles from a 50-row sample: estimates inside the data range, not exact
    assert (small["state"]["q01"] >= want["min"]).all()
    assert (small["state"]["q99"] <= want["max"]).all()
    assert (small["state"]["q01"] < small["state"]["q99"]).all()
    pixels = store.read("cam_image").reshape(-1, 3)
    np.testing.assert_allclose(small["cam_image"]["mean"], pixels.mean(0), rtol=1e-10)
    assert small["cam_image"]["max"].shape == (3,)
    assert EpisodeStore.open(store.path).metadata == before  # write=False


def test_stats_of_empty_store(tmp_path):
    with pytest.raises(DatasetError, match="empty store"):
        compute_stats(EpisodeStore.create(tmp_path / "e.zarr", {}))


def test_normalizer_round_trip_and_constant_dims(store):
    stats = compute_stats(store, write=False)
    norm = Normalizer.from_stats(stats, ["action", "state", "cam_image"])
    action = torch.from_numpy(store.read("action"))
    y = norm.normalize("action", action)
    assert torch.isfinite(y).all()
    # varying dims span exactly [-1, 1]; the constant dim maps to 0 (no division by ~0)
    torch.testing.assert_close(y[:, :2].min(0).values, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(y[:, :2].max(0).values, torch.tensor([1.0, 1.0]))
    assert (y[:, 2] == 0).all()
    torch.testing.assert_close(norm.unnormalize("action", y), action, rtol=1e-5, atol=1e-6)
    # a value off the constant dim stays finite and round-trips
    off = torch.tensor([[0.0, 0.0, 0.7]])
    torch.testing.assert_close(norm.unnormalize("action", norm.normalize("action", off)), off)

    state = torch.from_numpy(store.read("state")).float()[None]  # (1, N, 2, 2)
    z = norm.normalize("state", state)
    assert z.min() >= -1 - 1e-6 and z.max() <= 1 + 1e-6
    torch.testing.assert_close(norm.unnormalize("state", z), state, rtol=1e-5, atol=1e-5)

    images = torch.from_numpy(store.read("cam_image"))
    f = norm.normalize("cam_image", images)
    assert f.dtype == torch.float32 and f.min() >= -1 and f.max() <= 1
    assert norm.normalize("cam_image", torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [
        -1.0,
        1.0,
    ]
    assert torch.equal(norm.unnormalize("cam_image", f), images)


def test_normalizer_state_dict_travels(store):
    stats = compute_stats(store, write=False)
    norm = Normalizer.from_stats(stats, ["action", "state", "cam_image"])
    state = norm.state_dict()
    assert "stats.action.min" in state and "stats.state.q99" in state
    assert not any(k.startswith("stats.cam_image") for k in state)

    empty = Normalizer.from_shape_meta(store.shape_meta(["state", "cam_image"]))
    x = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="no statistics"):
        empty.normalize("action", x)
    empty.load_state_dict(state)
    torch.testing.assert_close(empty.normalize("action", x), norm.normalize("action", x))

    by_shape = Normalizer({"action": [3], "state": [2, 2], "cam_image": [3, 2, 3]})
    by_shape.load_state_dict(state)
    torch.testing.assert_close(by_shape.unnormalize("action", x), norm.unnormalize("action", x))

    with pytest.raises(ConfigError, match="no key 'other'"):
        norm.normalize("other", x)
    with pytest.raises(ConfigError, match="no statistics for key 'state'"):
        Normalizer.from_stats({"action": stats["action"]}, ["action", "state"])
    with pytest.raises(ConfigError, match="does not end with"):
        norm.normalize("action", torch.zeros(4, 5))
