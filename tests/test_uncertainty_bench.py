"""benchmarks/uncertainty.py: the AUROC it reports and the PushT perturbation it applies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "uncertainty.py"
_spec = importlib.util.spec_from_file_location("uncertainty_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_auroc_matches_a_pair_count():
    neg, pos = np.array([0.1, 0.4, 0.4, 0.9]), np.array([0.4, 0.5, 1.0])
    # P(pos > neg) + 0.5 P(tie), counted over all 12 pairs by hand
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert bench.auroc(neg, pos) == pytest.approx(wins / 12)
    assert bench.auroc(neg, neg + 10) == 1.0 and bench.auroc(neg + 10, neg) == 0.0


def test_pusht_displacement_moves_the_whole_block_by_the_stated_length():
    rng = np.random.default_rng(0)
    obs = {
        "agent_pos": rng.uniform(0, 512, (5, 2, 2)).astype(np.float32),
        "block_keypoints": rng.uniform(0, 512, (5, 2, 16)).astype(np.float32),
        "block_pose": rng.uniform(0, 512, (5, 2, 3)).astype(np.float32),
    }
    displaced = bench._pusht_displacement(None, 20.0)(obs, seed=3)
    shift = (displaced["block_keypoints"] - obs["block_keypoints"]).reshape(5, 2, 8, 2)
    # every corner of both frames of a window moves by one vector, 20 px long
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(shift[:, 0, 0], axis=-1), 20.0, rtol=1e-5)
    np.testing.assert_allclose(
        displaced["block_pose"][..., :2] - obs["block_pose"][..., :2], shift[:, :, 0], atol=1e-4
    )
    np.testing.assert_array_equal(displaced["block_pose"][..., 2], obs["block_pose"][..., 2])
    np.testing.assert_array_equal(displaced["agent_pos"], obs["agent_pos"])
    # windows get different directions; the same seed gives the same ones
    assert np.ptp(shift[:, 0, 0, 0]) > 1.0
    again = bench._pusht_displacement(None, 20.0)(obs, seed=3)
    np.testing.assert_array_equal(again["block_keypoints"], displaced["block_keypoints"])


def test_perturbations_refuse_a_task_without_a_displacement():
    with pytest.raises(ValueError, match="'can'"):
        bench.perturbations("can", None)


def test_novelty_distance_is_zero_on_training_windows_and_sees_the_transform():
    from ebt_policy.policies.novelty import NoveltyIndex, window_features

    rng = np.random.default_rng(0)
    windows = [{"obs": {"a": rng.normal(size=(2, 3)).astype(np.float32)}} for _ in range(300)]
    span = {"a": np.full(3, 2.0, np.float32)}
    bank = window_features({"a": np.stack([w["obs"]["a"] for w in windows])}, ["a"], span)
    index = NoveltyIndex.build(["a"], span, 2, bank, bank[:10])
    idx = np.arange(0, 300, 7)
    same = bench.novelty_distance(index, windows, idx, seeds=2, first_seed=1)
    assert same.shape == (2 * len(idx),) and np.all(same < 1e-3)  # cdist rounding

    def shift(obs, seed):  # the same seeds as window_values' batches
        return {"a": obs["a"] + 0.5}

    moved = bench.novelty_distance(index, windows, idx, seeds=1, first_seed=1, transform=shift)
    assert np.all(moved > 0.1) and bench.auroc(same, moved) == 1.0
