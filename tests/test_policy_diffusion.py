"""Diffusion Policy baselines: loss falls through the training loop, DDPM and DDIM samplers give
chunks of the right shape inside the action range, save -> load -> same chunks, sampler choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_policy_mse import losses, train_briefly
from test_training import make_toy_store

from ebt_policy.errors import ConfigError
from ebt_policy.policies import get_preset, load_policy, make_policy, make_policy_config

torch.set_num_threads(1)

SHAPE_META = {"obs": {"state": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}
ACTION_LO, ACTION_HI = np.array([-2.0, 10.0]), np.array([3.0, 11.0])


def stats() -> dict:
    out = {}
    for key, lo, hi in (("state", -np.ones(3), np.ones(3)), ("action", ACTION_LO, ACTION_HI)):
        mid = (lo + hi) / 2
        out[key] = {"min": lo, "max": hi, "mean": mid, "std": hi - lo, "q01": lo, "q99": hi}
    return out


def obs(B: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    return {"state": np.random.default_rng(seed).uniform(-1, 1, (B, 2, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr")


@pytest.mark.parametrize("policy", ["diffusion", "diffusion-unet"])
def test_loss_falls_and_checkpoint_gives_the_same_chunks(
    toy_store: Path, tmp_path: Path, policy: str
) -> None:
    run = train_briefly(toy_store, tmp_path / "run", policy, "tiny", steps=40)
    curve = losses(run)
    assert np.mean(curve[-8:]) < 0.7 * np.mean(curve[:3]), curve
    a, b = load_policy(run), load_policy(run)
    assert a.name == policy
    for sampler in ("ddpm", "ddim"):
        a.set_sampler(sampler)
        b.set_sampler(sampler)
        pa = a.predict_chunk(obs(), generator=torch.Generator().manual_seed(1))
        pb = b.predict_chunk(obs(), generator=torch.Generator().manual_seed(1))
        np.testing.assert_array_equal(pa.chunk, pb.chunk)


@pytest.mark.parametrize("policy", ["diffusion", "diffusion-unet"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 100), ("ddim", 10), ("ddim", 3)])
def test_samplers_give_chunks_in_the_action_range(policy: str, sampler: str, steps: int) -> None:
    torch.manual_seed(0)
    p = make_policy(make_policy_config(policy, "tiny"), SHAPE_META, stats()).eval()
    p.set_sampler(sampler, steps)
    pred = p.predict_chunk(obs(4))
    assert pred.chunk.shape == (4, 16, 2) and pred.actions.shape == (4, 8, 2)
    assert np.isfinite(pred.chunk).all()
    assert (pred.chunk >= ACTION_LO - 1e-4).all() and (pred.chunk <= ACTION_HI + 1e-4).all()
    assert (pred.steps == steps).all() and pred.energy is None


def test_row_noise_does_not_depend_on_the_batch() -> None:
    p = make_policy(make_policy_config("diffusion", "tiny"), SHAPE_META, stats()).eval()
    p.set_sampler("ddpm", 20)  # stochastic steps: each row's noise must come from its generator
    for row, seed in ((0, 7), (1, 8), (2, 9)):
        p.start_episode(row, seed)
    together = p.predict_chunk(obs(3), rows=[0, 1, 2]).chunk
    p.start_episode(1, 8)
    alone = p.predict_chunk({"state": obs(3)["state"][1:2]}, rows=[1]).chunk
    np.testing.assert_allclose(alone[0], together[1], atol=1e-5)


def test_sampler_choice_and_errors() -> None:
    p = make_policy(make_policy_config("diffusion", "tiny"), SHAPE_META, stats())
    assert (p.config.schedule.sampler, p.config.schedule.sampler_steps) == ("ddpm", 100)
    p.set_sampler("ddim")
    assert p.config.schedule.sampler_steps == 10  # DDIM's default, not DDPM's 100
    p.set_sampler(steps=16)
    assert (p.config.schedule.sampler, p.config.schedule.sampler_steps) == ("ddim", 16)
    with pytest.raises(ConfigError, match="sampler"):
        p.set_sampler("euler")
    with pytest.raises(ConfigError, match="sampler_steps"):
        p.set_sampler("ddpm", 101)
    with pytest.raises(ConfigError, match="horizon"):
        make_policy_config("diffusion-unet", "tiny", horizon=10)
    with pytest.raises(ConfigError, match="n_groups"):
        make_policy_config("diffusion-unet", "tiny", down_dims=(12, 24))


def test_presets() -> None:
    assert get_preset("diffusion-unet", "paper").policy.down_dims == (256, 512, 1024)
    for preset in ("tiny", "small", "paper", "mlp"):
        ebt, dp = get_preset("ebt", preset), get_preset("diffusion", preset)
        assert dp.train == ebt.train
        assert (dp.policy.d_model, dp.policy.n_layers) == (
            ebt.policy.d_model,
            ebt.policy.n_energy_layers,
        )
    s = get_preset("diffusion", "tiny").policy.schedule
    assert (s.num_train_timesteps, s.beta_schedule, s.prediction_type, s.clip_sample) == (
        100, "squaredcos_cap_v2", "epsilon", True
    )  # fmt: skip


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_loss_curve(
    toy_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the denoising loss draws noise and timesteps every step: resume must restore that RNG too
    from ebt_policy.training import TrainConfig, train
    from ebt_policy.training import loop as train_loop

    def cfg(out: Path, **kw) -> TrainConfig:
        return TrainConfig(
            dataset=str(toy_store), out=str(out), policy="diffusion-unet", preset="tiny",
            policy_overrides={"down_dims": (16, 32)}, steps=12, batch_size=16, device="cpu",
            log_every=1, save_every=5, val_every=0, progress=False, tensorboard=False, **kw,
        )  # fmt: skip

    full = train(cfg(tmp_path / "full"))
    real_step, calls = train_loop.train_step, {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise Interrupted
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", crashing_step)
    with pytest.raises(Interrupted):
        train(cfg(tmp_path / "resumed"))
    monkeypatch.setattr(train_loop, "train_step", real_step)
    resumed = train(cfg(tmp_path / "resumed", resume=True))
    assert losses(resumed) == losses(full)
