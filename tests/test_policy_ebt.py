"""EBT policy: configs, presets, loss, predictions in robot units, batch independence, toy task."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ebt_policy.errors import ConfigError, EbtPolicyError
from ebt_policy.policies import (
    EBTPolicy,
    Policy,
    make_policy,
    make_policy_config,
    policy_config_from_dict,
)

torch.set_num_threads(1)

LOW_DIM = {"robot0_eef_pos": 3, "object": 5}
DA = 4


def shape_meta(images: bool = False) -> dict:
    obs = {k: {"shape": [d], "type": "low_dim"} for k, d in LOW_DIM.items()}
    if images:
        obs["agentview_image"] = {"shape": [48, 48, 3], "type": "rgb"}
    return {"obs": obs, "action": {"shape": [DA]}}


def stats_for(arrays: dict[str, np.ndarray]) -> dict:
    """Statistics in compute_stats' format from arrays (N, ..., D)."""
    out = {}
    for key, x in arrays.items():
        x = x.reshape(-1, x.shape[-1])
        out[key] = {
            "min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
            "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0),
        }  # fmt: skip
    return out


def random_stats() -> dict:
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=(100, d)).astype(np.float32) for k, d in LOW_DIM.items()}
    arrays["action"] = rng.uniform(10, 20, size=(100, DA)).astype(np.float32)
    return stats_for(arrays)


def batch(B: int = 4, images: bool = False, seed: int = 0) -> dict:
    """A collated WindowDataset batch in robot units (CONTRACTS A)."""
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.randn(B, 2, d, generator=g) for k, d in LOW_DIM.items()}
    if images:
        obs["agentview_image"] = torch.randint(0, 256, (B, 2, 48, 48, 3), generator=g).to(
            torch.uint8
        )
    return {
        "obs": obs,
        "action": 10 + 10 * torch.rand(B, 16, DA, generator=g),
        "obs_pad": torch.zeros(B, 2, dtype=torch.bool),
        "action_pad": torch.zeros(B, 16, dtype=torch.bool),
    }


def obs_np(b: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in b["obs"].items()}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------- configs


def test_presets():
    tiny = make_policy(make_policy_config("ebt", "tiny"), shape_meta(), random_stats())
    assert n_params(tiny) < 500_000
    paper = make_policy_config("ebt", "paper")
    assert (paper.d_model, paper.n_obs_layers, paper.n_energy_layers, paper.n_heads) == (
        256, 8, 8, 4,
    )  # fmt: skip
    assert (
        paper.n_obs_steps,
        paper.horizon,
        paper.n_action_steps,
        paper.descent.descent_steps,
    ) == (
        2,
        16,
        8,
        2,
    )
    descent = paper.descent
    assert (descent.train_steps_base, descent.train_steps_extra, descent.alpha) == (6, 4, 1000.0)
    mlp = make_policy_config("ebt", "mlp")
    assert (mlp.energy, mlp.mlp_hidden, mlp.mlp_layers, mlp.descent.train_steps_base) == (
        "mlp", 256, 3, 2,
    )  # fmt: skip
    assert (mlp.descent.objective, mlp.descent.eqm_weight) == ("energy_score", 1.0)
    reference = make_policy_config("ebt", "mlp-reference").descent
    assert (reference.objective, reference.rms_norm, reference.train_steps_base) == (
        "mse", "sample", 3,
    )  # fmt: skip
    tiny_cfg, tiny_ref = (
        make_policy_config("ebt", "tiny"),
        make_policy_config("ebt", "tiny-reference"),
    )
    assert (tiny_cfg.descent.objective, tiny_cfg.descent.rms_norm) == ("energy_score", "none")
    assert (tiny_ref.descent.objective, tiny_ref.descent.rms_norm) == ("mse", "sample")
    assert (tiny_ref.d_model, tiny_ref.n_energy_layers) == (
        tiny_cfg.d_model,
        tiny_cfg.n_energy_layers,
    )
    small = make_policy_config("ebt", "small", descent={"descent_steps": 20})
    assert small.descent.descent_steps == 20


def test_paper_preset_builds_the_paper_model():
    policy = make_policy(make_policy_config("ebt", "paper"), shape_meta(), random_stats())
    energy = policy.energy
    assert len(energy.obs_blocks) == 8 and len(energy.energy_blocks) == 8
    assert energy.obs_in.out_features == 256 and energy.energy_blocks[0].self_attn.n_heads == 4


def test_images_too_small_for_the_trunk_are_a_config_error():
    meta = shape_meta()
    meta["obs"]["agentview_image"] = {"shape": [24, 24, 3], "type": "rgb"}
    with pytest.raises(ConfigError, match="24x24"):
        make_policy(make_policy_config("ebt", "tiny"), meta, random_stats())


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="huge"):
        make_policy_config("ebt", "huge")
    with pytest.raises(ConfigError, match="no-such-policy"):
        make_policy_config("no-such-policy", "tiny")
    with pytest.raises(ConfigError, match="d_modle"):
        make_policy_config("ebt", "tiny", d_modle=32)
    with pytest.raises(ConfigError, match="d_model must be int"):
        make_policy_config("ebt", "tiny", d_model="64")
    with pytest.raises(ConfigError, match="n_heads"):
        make_policy_config("ebt", "tiny", d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="rms_norm"):
        make_policy_config("ebt", "tiny", descent={"rms_norm": "global"})
    with pytest.raises(ConfigError, match="n_action_steps"):
        make_policy_config("ebt", "tiny", n_action_steps=16)


def test_config_json_round_trip_and_bad_dicts():
    cfg = make_policy_config("ebt", "mlp", descent={"alpha": 100, "descent_steps": 20})
    assert isinstance(cfg.descent.alpha, float)  # ints are accepted for float fields
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert policy_config_from_dict(d) == cfg
    with pytest.raises(ConfigError, match="colour_jitter"):
        policy_config_from_dict({**d, "colour_jitter": 0.1})
    with pytest.raises(ConfigError, match="descent_steps must be int"):
        policy_config_from_dict({**d, "descent": {**d["descent"], "descent_steps": 2.5}})
    with pytest.raises(ConfigError, match="loss_final_step_only must be bool"):
        policy_config_from_dict({**d, "descent": {**d["descent"], "loss_final_step_only": "yes"}})


def test_bad_shape_meta_and_stats():
    cfg = make_policy_config("ebt", "mlp")
    with pytest.raises(ConfigError, match="action"):
        make_policy(cfg, {"obs": shape_meta()["obs"]}, random_stats())
    stats = random_stats()
    del stats["object"]
    with pytest.raises(ConfigError, match="object"):
        make_policy(cfg, shape_meta(), stats)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("preset,images", [("tiny", True), ("mlp", False), ("mlp", True)])
def test_compute_loss_reaches_every_parameter(preset, images):
    steps = {"train_steps_base": 2, "train_steps_extra": 0}
    cfg = make_policy_config("ebt", preset, descent=steps, resnet_width=8)
    policy = make_policy(cfg, shape_meta(images), random_stats())
    policy.train()
    loss, metrics = policy.compute_loss(batch(3, images))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["n_steps"] == 2.0
    loss.backward()
    dead = [n for n, p in policy.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    if policy.descent.config.step_scale == "fixed":
        # with a fixed step size only grad_x E is trained: the energy head's output bias (its
        # level) is the one parameter no loss can reach, by construction
        assert dead == ["energy.out.bias" if cfg.energy == "mlp" else "energy.head.3.bias"]
        dead = []
    assert not dead, f"no gradient reaches {dead}"


def test_compute_loss_rejects_wrong_action_shape():
    policy = make_policy(make_policy_config("ebt", "mlp"), shape_meta(), random_stats())
    b = batch(2)
    b["action"] = b["action"][:, :8]
    with pytest.raises(EbtPolicyError, match=r"\(B, 16, 4\)"):
        policy.compute_loss(b)


# ---------------------------------------------------------------------------- inference


def test_predict_chunk_shapes_units_and_protocol():
    policy = make_policy(make_policy_config("ebt", "tiny"), shape_meta(), random_stats()).eval()
    assert isinstance(policy, Policy) and isinstance(policy, EBTPolicy) and policy.name == "ebt"
    pred = policy.predict_chunk(obs_np(batch(3)), generator=torch.Generator().manual_seed(0))
    assert pred.chunk.shape == (3, 16, DA) and pred.chunk.dtype == np.float32
    np.testing.assert_array_equal(pred.actions, pred.chunk[:, 1:9])
    assert pred.energy.shape == (3,) and pred.grad_norm.shape == (3,)
    assert pred.steps.tolist() == [policy.config.descent.descent_steps] * 3 and pred.latency_s > 0
    # Robot units: the action statistics span [10, 20]; normalised outputs are O(1).
    assert 0 < pred.chunk.mean() < 30
    adaptive = policy.predict_chunk(obs_np(batch(3)), descent_steps=20, descent_min_grad=1e-3)
    assert ((adaptive.steps >= 1) & (adaptive.steps <= 20)).all()


def test_predict_chunk_is_seedable():
    policy = make_policy(make_policy_config("ebt", "mlp"), shape_meta(), random_stats()).eval()
    obs = obs_np(batch(2))
    a, b, c = (
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(s)).chunk
        for s in (1, 1, 2)
    )
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_predict_chunk_bad_observations():
    policy = make_policy(make_policy_config("ebt", "mlp"), shape_meta(), random_stats())
    obs = obs_np(batch(2))
    with pytest.raises(EbtPolicyError, match="'object'"):
        policy.predict_chunk({"robot0_eef_pos": obs["robot0_eef_pos"]})
    with pytest.raises(EbtPolicyError, match=r"'object' has shape \(2, 3, 5\)"):
        policy.predict_chunk({**obs, "object": np.zeros((2, 3, 5), np.float32)})
    bad = obs["object"].copy()
    bad[1, 0, 2] = np.nan
    with pytest.raises(EbtPolicyError, match="'object' contains NaN"):
        policy.predict_chunk({**obs, "object": bad})


@pytest.mark.parametrize("images", [False, True])
def test_same_observation_same_chunk_alone_and_in_a_batch_of_64(images):
    cfg = make_policy_config("ebt", "tiny", resnet_width=8)
    policy = make_policy(cfg, shape_meta(images), random_stats()).eval()
    b = batch(64, images, seed=1)
    noise = torch.randn(64, 16, DA, generator=torch.Generator().manual_seed(0))
    full = policy.predict_chunk(obs_np(b), init_chunk=noise)
    one = policy.predict_chunk({k: v[5:6] for k, v in obs_np(b).items()}, init_chunk=noise[5:6])
    np.testing.assert_allclose(one.chunk[0], full.chunk[5], atol=1e-4, rtol=0)
    np.testing.assert_allclose(one.energy[0], full.energy[5], atol=1e-5, rtol=0)
    if not images:  # the reference's whole-batch RMS couples the batch
        batch_cfg = dataclasses.replace(
            cfg, descent=dataclasses.replace(cfg.descent, rms_norm="batch")
        )
        batch_rms = make_policy(batch_cfg, shape_meta(), None)
        batch_rms.load_state_dict(policy.state_dict())
        full = batch_rms.predict_chunk(obs_np(b), init_chunk=noise)
        one = batch_rms.predict_chunk(
            {k: v[5:6] for k, v in obs_np(b).items()}, init_chunk=noise[5:6]
        )
        assert np.abs(one.chunk[0] - full.chunk[5]).max() > 1e-3


def test_per_episode_noise_makes_an_episode_independent_of_its_batch():
    """start_episode(row, seed) + rows=: what the evaluation runner uses for reproducible evals."""
    policy = make_policy(make_policy_config("ebt", "tiny"), shape_meta(), random_stats()).eval()
    obs = obs_np(batch(8, seed=2))
    for row in range(8):
        policy.start_episode(row, 100 + row)
    together = [policy.predict_chunk(obs, rows=list(range(8))).chunk[3] for _ in range(2)]
    # Row 3 alone, restarted with the same episode seed, sees the same noise sequence.
    policy.reset()
    policy.start_episode(3, 103)
    obs3 = {k: v[3:4] for k, v in obs.items()}
    alone = [policy.predict_chunk(obs3, rows=[3]).chunk[0] for _ in range(2)]
    np.testing.assert_allclose(alone[0], together[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(alone[1], together[1], atol=1e-4, rtol=0)
    assert np.abs(alone[0] - alone[1]).max() > 1e-4  # the generator advances chunk to chunk
    with pytest.raises(EbtPolicyError, match="rows"):
        policy.predict_chunk(obs, rows=[0, 1])


def test_state_dict_carries_normaliser_and_weights():
    cfg = make_policy_config("ebt", "tiny")
    policy = make_policy(cfg, shape_meta(), random_stats()).eval()
    empty = make_policy(cfg, shape_meta(), stats=None).eval()
    with pytest.raises(ConfigError, match="statistics"):
        empty.predict_chunk(obs_np(batch(2)))
    empty.load_state_dict(policy.state_dict())
    obs = obs_np(batch(2))
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0)).chunk
    b = empty.predict_chunk(obs, generator=torch.Generator().manual_seed(0)).chunk
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- toy task


def toy_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actions that are a fixed function of the current state: each chunk is a ramp whose offset
    and slope depend on the state."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1, 1, size=(n, 2, 3)).astype(np.float32)
    obj = rng.uniform(-1, 1, size=(n, 2, 5)).astype(np.float32)
    s = np.concatenate([pos[:, -1], obj[:, -1]], axis=1)  # (n, 8) state at time t
    w = np.random.default_rng(123).normal(size=(8, DA)).astype(np.float32) / 2
    base = np.tanh(s @ w)  # (n, Da)
    ramp = np.linspace(-0.5, 0.5, 16, dtype=np.float32)[None, :, None]
    action = base[:, None, :] + ramp * s[:, None, :1]  # (n, 16, Da)
    return pos, obj, action.astype(np.float32)


def train_toy(preset: str, steps: int, **overrides) -> tuple[float, float]:
    """Train on the toy task; return (held-out MAE with 2 descent steps, MAE of the mean chunk)."""
    torch.manual_seed(0)
    pos, obj, action = toy_data(4096, 0)
    stats = stats_for({"robot0_eef_pos": pos, "object": obj, "action": action})
    policy = make_policy(make_policy_config("ebt", preset, **overrides), shape_meta(), stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    tensors = [torch.from_numpy(a) for a in (pos, obj, action)]
    policy.train()
    for _ in range(steps):
        idx = torch.randint(0, len(pos), (64,), generator=g)
        b = {"obs": {"robot0_eef_pos": tensors[0][idx], "object": tensors[1][idx]}}
        loss, _ = policy.compute_loss({**b, "action": tensors[2][idx]})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    policy.eval()
    pos2, obj2, action2 = toy_data(256, 1)
    pred = policy.predict_chunk(
        {"robot0_eef_pos": pos2, "object": obj2},
        generator=torch.Generator().manual_seed(0),
        descent_steps=2,  # the paper's 2 steps, whatever the preset's default
    )
    assert pred.steps.tolist() == [2] * 256
    mae = float(np.abs(pred.chunk - action2).mean())
    baseline = float(np.abs(action.mean(0, keepdims=True) - action2).mean())
    return mae, baseline


def test_toy_task_mlp_energy_predicts_held_out_chunks_in_2_steps():
    # The best observation-blind answer (the mean chunk) has error `baseline`; the untrained
    # policy is ~3x worse than that, the trained one ~3x better (0.34 on this seed).
    mae, baseline = train_toy("mlp", 300)
    assert mae < 0.5 * baseline, (mae, baseline)


@pytest.mark.slow
def test_toy_task_tiny_transformer_predicts_held_out_chunks_in_2_steps():
    mae, baseline = train_toy("tiny", 300)
    assert mae < 0.5 * baseline, (mae, baseline)


# ---------------------------------------------------------------------------- real data path


def test_trains_and_predicts_from_a_window_dataset(tmp_path):
    """Episode store -> WindowDataset -> DataLoader batches -> compute_loss / predict_chunk."""
    from torch.utils.data import DataLoader

    from ebt_policy.datasets import EpisodeStore, WindowDataset, compute_stats

    rng = np.random.default_rng(0)
    store = EpisodeStore.create(tmp_path / "demo.zarr", {"task": {"name": "toy", "env_kwargs": {}}})
    for length in (12, 20):
        store.add_episode(
            {
                "action": rng.uniform(-2, 3, size=(length, DA)).astype(np.float32),
                "robot0_eef_pos": rng.normal(size=(length, 3)).astype(np.float32),
                "agentview_image": rng.integers(0, 256, (length, 48, 48, 3), dtype=np.uint8),
            }
        )
    keys = ["robot0_eef_pos", "agentview_image"]
    stats = compute_stats(store)
    cfg = make_policy_config("ebt", "tiny", descent={"train_steps_base": 2, "train_steps_extra": 0})
    policy = make_policy(cfg, store.shape_meta(keys), stats)
    ds = WindowDataset(store, keys, n_obs_steps=2, horizon=16)
    b = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    loss, _ = policy.compute_loss(b)
    loss.backward()
    assert torch.isfinite(loss)
    pred = policy.eval().predict_chunk({k: v.numpy() for k, v in b["obs"].items()})
    assert pred.chunk.shape == (4, 16, DA)
