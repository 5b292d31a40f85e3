"""MSE baseline: presets mirror EBT's, the loss falls through the training loop, save -> load ->
same chunks, config errors name the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import make_toy_store

from ebt_policy.errors import ConfigError
from ebt_policy.policies import get_preset, load_policy, make_policy_config
from ebt_policy.training import TrainConfig, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr")


def train_briefly(store: Path, out: Path, policy: str, preset: str, steps: int = 30) -> Path:
    """A short CPU run through the shared training loop (EMA, warm-up + cosine, checkpoints)."""
    cfg = TrainConfig(
        dataset=str(store), out=str(out), policy=policy, preset=preset, steps=steps,
        batch_size=16, warmup_steps=3, device="cpu", log_every=1, save_every=0, val_every=0,
        progress=False, tensorboard=False,
    )  # fmt: skip
    return train(cfg)


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_presets_match_ebt_sizes_and_recipes() -> None:
    for preset in ("tiny", "small", "paper", "mlp"):
        ebt, mse = get_preset("ebt", preset), get_preset("mse", preset)
        assert mse.train == ebt.train
        e, m = ebt.policy, mse.policy
        assert (m.d_model, m.n_heads, m.n_obs_layers, m.n_layers) == (
            e.d_model, e.n_heads, e.n_obs_layers, e.n_energy_layers
        )  # fmt: skip
        assert (m.mlp_hidden, m.mlp_layers, m.resnet_width) == (
            e.mlp_hidden, e.mlp_layers, e.resnet_width
        )  # fmt: skip
        assert m.backbone == e.energy


@pytest.mark.parametrize("preset", ["tiny", "mlp"])
def test_loss_falls_and_checkpoint_gives_the_same_chunks(
    toy_store: Path, tmp_path: Path, preset: str
) -> None:
    run = train_briefly(toy_store, tmp_path / "run", "mse", preset)
    curve = losses(run)
    assert np.mean(curve[-5:]) < 0.5 * np.mean(curve[:3]), curve
    a, b = load_policy(run), load_policy(run)
    assert a.name == "mse" and a.config.backbone == ("mlp" if preset == "mlp" else "transformer")
    obs = {"state": np.random.default_rng(0).uniform(-1, 1, (3, 2, 3)).astype(np.float32)}
    pa, pb = a.predict_chunk(obs), b.predict_chunk(obs)
    np.testing.assert_array_equal(pa.chunk, pb.chunk)
    assert pa.chunk.shape == (3, 16, 2) and pa.actions.shape == (3, 8, 2)
    assert (pa.steps == 1).all() and pa.energy is None


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="backbone"):
        make_policy_config("mse", preset="tiny", backbone="cnn")
    with pytest.raises(ConfigError, match="n_heads"):
        make_policy_config("mse", preset="tiny", d_model=30, n_heads=4)
