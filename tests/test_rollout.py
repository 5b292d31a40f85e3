"""The rollout executor: observation history, chunk queue, re-planning and per-row seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebt_policy.policies import make_policy, make_policy_config
from ebt_policy.policies.base import ChunkPrediction
from ebt_policy.rollout import Plan, RolloutExecutor

torch.set_num_threads(1)

LOW_DIM = {"robot0_eef_pos": 3, "object": 5}
DA = 4


def _ebt_policy():
    """An untrained MLP-energy EBT policy (To=2, Ta=8) with made-up statistics."""
    rng = np.random.default_rng(0)
    stats = {}
    for key, d in {**LOW_DIM, "action": DA}.items():
        x = rng.normal(size=(100, d)).astype(np.float32)
        stats[key] = {
            "min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
            "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0),
        }  # fmt: skip
    shape_meta = {
        "obs": {k: {"shape": [d], "type": "low_dim"} for k, d in LOW_DIM.items()},
        "action": {"shape": [DA]},
    }
    return make_policy(make_policy_config("ebt", "mlp"), shape_meta, stats).eval()


def _frame(t: float) -> dict[str, np.ndarray]:
    return {k: np.full(d, t, np.float32) for k, d in LOW_DIM.items()}


class CountingPolicy:
    """To=3, Ta=2: each action is (row, episode seed, newest frame value, step in chunk)."""

    name = "counting"
    n_obs_steps = 3
    n_action_steps = 2
    horizon = 4

    def __init__(self) -> None:
        self.seeds: dict[int, int | None] = {}
        self.calls: list[tuple[list[int], dict[str, np.ndarray]]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1
        self.seeds.clear()

    def start_episode(self, row: int, seed: int | None) -> None:
        self.seeds[row] = seed

    def predict_chunk(self, obs_window: dict[str, np.ndarray], rows=None) -> ChunkPrediction:
        assert rows is not None
        self.calls.append((list(rows), {k: v.copy() for k, v in obs_window.items()}))
        newest = obs_window["object"][:, -1, 0]  # (B,)
        acts = np.array(
            [
                [[r, self.seeds[r], v, i] for i in range(2)]
                for r, v in zip(rows, newest, strict=True)
            ],
            np.float32,
        )  # (B, Ta, 4)
        return ChunkPrediction(acts, acts, energy=newest.copy(), steps=np.full(len(rows), 3))


def test_ebt_policy_executes_ta_actions_then_replans():
    """Moved from the ActionQueue test: one plan per Ta=8 steps, its actions in order."""
    policy = _ebt_policy()
    plans: list[Plan] = []
    executor = RolloutExecutor(policy, n_rows=2, on_plan=plans.append)
    for row in (0, 1):
        executor.start_episode(row, _frame(0.0), seed=row)
    acts = [executor.act() for _ in range(20)]  # the same observations every step
    first = np.stack([acts[0][0], acts[0][1]])
    assert executor.n_plans == len(plans) == 3  # planned at steps 0, 8 and 16
    assert [p.records[0].t for p in plans] == [0, 8, 16]
    plan = plans[0].prediction
    executed = np.stack([np.stack([a[r] for a in acts[:8]]) for r in (0, 1)])  # (2, 8, Da)
    np.testing.assert_array_equal(executed, plan.actions)
    assert plans[-1].prediction is not plan and first.shape == (2, DA)
    assert executor.queued(0) == 4 and not executor.needs_plan(0)
    executor.reset()
    assert executor.active_rows == []
    executor.start_episode(0, _frame(0.0), seed=0)
    assert executor.needs_plan(0) and executor.queued(0) == 0


def test_ebt_rows_are_seeded_per_episode_whatever_else_is_batched():
    """A row's chunks depend on its episode seed, not on which other rows share the call."""
    policy = _ebt_policy()
    alone = RolloutExecutor(policy, n_rows=1)
    alone.start_episode(0, _frame(0.5), seed=7)
    expected = alone.act()[0]
    both = RolloutExecutor(policy, n_rows=2)
    both.start_episode(0, _frame(0.1), seed=3)
    both.start_episode(1, _frame(0.5), seed=7)
    np.testing.assert_allclose(both.act()[1], expected, rtol=1e-5, atol=1e-6)


def test_history_padding_queue_and_per_row_replanning():
    policy = CountingPolicy()
    records: list[Plan] = []
    executor = RolloutExecutor(policy, n_rows=3, on_plan=records.append)
    assert policy.resets == 1  # building the executor resets the policy
    executor.start_episode(0, _frame(0.0), seed=10)
    executor.start_episode(2, _frame(5.0), seed=12)
    assert executor.active_rows == [0, 2]

    out = executor.act()
    assert sorted(out) == [0, 2]
    rows, window = policy.calls[-1]
    assert rows == [0, 2] and window["object"].shape == (2, 3, 5)
    np.testing.assert_array_equal(window["object"][1, :, 0], [5.0, 5.0, 5.0])  # first frame x To
    np.testing.assert_array_equal(out[2], [2, 12, 5.0, 0])
    executor.observe(0, _frame(1.0))
    executor.observe(2, _frame(6.0))

    # row 1 starts late: only it is planned for while the others still have an action queued
    executor.start_episode(1, _frame(9.0), seed=11)
    out = executor.act()
    assert policy.calls[-1][0] == [1]
    np.testing.assert_array_equal(out[0], [0, 10, 0.0, 1])  # still the first chunk
    np.testing.assert_array_equal(out[1], [1, 11, 9.0, 0])
    executor.observe(0, _frame(2.0))
    executor.observe(1, _frame(10.0))
    executor.observe(2, _frame(7.0))

    out = executor.act()
    rows, window = policy.calls[-1]
    assert rows == [0, 2]
    np.testing.assert_array_equal(window["object"][0, :, 0], [0.0, 1.0, 2.0])  # last To frames
    np.testing.assert_array_equal(out[2], [2, 12, 7.0, 0])
    assert [r.t for r in records[-1].records] == [2, 2] and records[-1].records[0].batch == 2
    assert records[-1].records[1].energy == 7.0 and records[-1].records[1].steps == 3

    executor.end_episode(2)
    assert sorted(executor.act()) == [0, 1]
    with pytest.raises(ValueError, match="no episode running"):
        executor.observe(2, _frame(0.0))


def test_n_action_steps_caps_each_chunk_and_bad_chunks_raise():
    policy = CountingPolicy()
    executor = RolloutExecutor(policy, n_rows=1, n_action_steps=1)
    executor.start_episode(0, _frame(0.0), seed=0)
    executor.act()
    executor.act()
    assert executor.n_plans == 2  # re-planned after one action

    class NaNPolicy(CountingPolicy):
        def predict_chunk(self, obs_window, rows=None):
            pred = super().predict_chunk(obs_window, rows)
            pred.actions[:] = np.nan
            return pred

    executor = RolloutExecutor(NaNPolicy(), n_rows=1)
    executor.start_episode(0, _frame(0.0), seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        executor.act()
    with pytest.raises(ValueError, match="n_rows"):
        RolloutExecutor(CountingPolicy(), n_rows=0)


def test_rollout_imports_no_envs_datasets_training_or_simulators():
    import subprocess
    import sys

    code = (
        "import sys, ebt_policy.rollout; "
        "bad = ('ebt_policy.envs', 'ebt_policy.datasets', 'ebt_policy.training', 'zarr', "
        "'mujoco', 'robosuite', 'gymnasium'); "
        "print(sorted(m for m in sys.modules if m.startswith(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
