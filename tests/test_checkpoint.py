"""Checkpoints: save -> load -> identical actions; bad checkpoints give one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt_policy import load_policy
from ebt_policy.errors import CheckpointError
from ebt_policy.policies import make_policy, make_policy_config
from ebt_policy.policies.checkpoint import save_pretrained
from ebt_policy.training import TrainConfig, train


def _toy_store(path: Path) -> Path:
    from ebt_policy.datasets import EpisodeStore

    rng = np.random.default_rng(1)
    store = EpisodeStore.create(path, {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(6):
        state = rng.uniform(-1, 1, size=(25, 4)).astype(np.float32)
        action = np.tanh(state[:, :2] - state[:, 2:]).astype(np.float32)
        store.add_episode({"action": action, "state": state})
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    store = _toy_store(root / "toy.zarr")
    cfg = TrainConfig(
        dataset=str(store),
        out=str(root / "run"),
        preset="mlp",
        policy_overrides={"mlp_hidden": 32, "mlp_layers": 2},
        steps=12,
        batch_size=8,
        device="cpu",
        save_every=6,
        progress=False,
    )
    return train(cfg)


def _obs(policy: torch.nn.Module, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"state": rng.uniform(-1, 1, (batch, policy.n_obs_steps, 4)).astype(np.float32)}


def _actions(policy: torch.nn.Module, obs: dict[str, np.ndarray]) -> np.ndarray:
    gen = torch.Generator().manual_seed(123)
    return policy.predict_chunk(obs, generator=gen).chunk


def test_training_checkpoint_holds_ema_weights_and_loads_from_any_path(run_dir: Path) -> None:
    last = run_dir / "checkpoints" / "last"
    config = json.loads((last / "config.json").read_text())
    assert config["policy"]["name"] == "ebt" and config["step"] == 12
    assert config["dataset_metadata"]["task"]["name"] == "toy"
    assert config["train_config"]["preset"] == "mlp"
    assert config["shape_meta"]["obs"]["state"]["shape"] == [4]

    # the deployable weights are the EMA's: rebuild it from the training state and compare
    state = torch.load(last / "training_state" / "state.pt", weights_only=True)
    ema_weights = {
        k[len("module.") :]: v for k, v in state["ema"].items() if k.startswith("module.")
    }
    reference = make_policy(
        make_policy_config("ebt", "mlp", mlp_hidden=32, mlp_layers=2), config["shape_meta"]
    )
    reference.load_state_dict(ema_weights)
    reference.eval()

    policy = load_policy(run_dir)
    assert not policy.training
    obs = _obs(policy)
    expected = _actions(reference, obs)
    for path in (run_dir, run_dir / "checkpoints", last, run_dir / "checkpoints" / "step_00000012"):
        np.testing.assert_array_equal(_actions(load_policy(path, device="cpu"), obs), expected)
    # the normaliser statistics came with the weights: they are the store's
    from ebt_policy.datasets import EpisodeStore, compute_stats

    stats = compute_stats(EpisodeStore.open(config["train_config"]["dataset"]), write=False)
    norm = policy.normalizer.state_dict()
    assert bool(norm["has_stats"])
    for key in ("action", "state"):
        for name in ("min", "max"):
            np.testing.assert_allclose(norm[f"stats.{key}.{name}"], stats[key][name], rtol=1e-6)
    earlier = load_policy(run_dir / "checkpoints" / "step_00000006")
    assert not np.array_equal(_actions(earlier, obs), expected)


def test_save_pretrained_roundtrip_identical_actions(tmp_path: Path) -> None:
    shape_meta = {"obs": {"state": {"shape": [4], "type": "low_dim"}}, "action": {"shape": [2]}}
    stats = {
        k: {
            "min": -np.ones(n),
            "max": np.ones(n) * 2,
            "mean": np.zeros(n),
            "std": np.ones(n),
            "q01": -np.ones(n),
            "q99": np.ones(n),
        }
        for k, n in (("state", 4), ("action", 2))
    }
    torch.manual_seed(0)
    policy = make_policy(make_policy_config("ebt", "tiny"), shape_meta, stats=stats).eval()
    out = save_pretrained(policy, tmp_path / "p", shape_meta=shape_meta)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(out)
    obs = _obs(policy, batch=4)
    np.testing.assert_array_equal(_actions(loaded, obs), _actions(policy, obs))
    with pytest.raises(CheckpointError, match="already exists"):
        save_pretrained(policy, out, shape_meta=shape_meta)


def _copy_last(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir / "checkpoints" / "last", dest)
    return dest


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_policy(path)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message


def test_bad_checkpoints_give_one_line_errors_naming_the_file(
    run_dir: Path, tmp_path: Path
) -> None:
    _one_line_error(tmp_path / "nowhere", "nowhere: no such")

    ckpt = _copy_last(run_dir, tmp_path / "truncated_weights")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _one_line_error(ckpt, f"{weights}: unreadable")

    ckpt = _copy_last(run_dir, tmp_path / "missing_weights")
    (ckpt / "model.safetensors").unlink()
    _one_line_error(ckpt, f"{ckpt / 'model.safetensors'}: missing")

    ckpt = _copy_last(run_dir, tmp_path / "missing_config")
    (ckpt / "config.json").unlink()
    _one_line_error(ckpt, f"{ckpt / 'config.json'}: missing")

    ckpt = _copy_last(run_dir, tmp_path / "truncated_config")
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text[: len(text) // 2])
    _one_line_error(ckpt, f"{ckpt / 'config.json'}: not valid JSON")

    # weights from a differently sized model: the error names the file and a tensor
    ckpt = _copy_last(run_dir, tmp_path / "mismatched")
    config = json.loads((ckpt / "config.json").read_text())
    config["policy"]["config"]["mlp_hidden"] = 48
    (ckpt / "config.json").write_text(json.dumps(config))
    _one_line_error(ckpt, f"{ckpt / 'model.safetensors'}: does not match the config")
    config["policy"]["config"].update(mlp_hidden=32, mlp_layers=3)  # one layer more
    (ckpt / "config.json").write_text(json.dumps(config))
    _one_line_error(ckpt, "missing tensors [energy.")

    ckpt = _copy_last(run_dir, tmp_path / "unknown_field")
    config = json.loads((ckpt / "config.json").read_text())
    config["policy"]["config"]["warp_drive"] = True
    (ckpt / "config.json").write_text(json.dumps(config))
    _one_line_error(ckpt, "warp_drive")

    # a run whose 'last' link points at a deleted checkpoint
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.symlink("step_00000099", run / "checkpoints" / "last")
    _one_line_error(run, "no complete checkpoint")


def test_resume_from_truncated_training_state_names_the_file(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    state = run / "checkpoints" / "last" / "training_state" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    saved = json.loads((run / "config.json").read_text())["train"]
    cfg = TrainConfig.from_dict({**saved, "out": str(run), "resume": True, "steps": 12})
    with pytest.raises(CheckpointError, match="state.pt: unreadable"):
        train(cfg)


def test_loading_does_not_import_training_code(run_dir: Path) -> None:
    """Nor the episode store or the envs: a deploy loop loads and runs the policy alone."""
    code = (
        "import sys; import numpy as np; from ebt_policy import load_policy; "
        f"policy = load_policy({str(run_dir)!r}); "
        "policy.predict_chunk({'state': np.zeros((1, 2, 4), np.float32)}); "
        "assert not any(m.startswith('ebt_policy.training') for m in sys.modules), 'imported'; "
        "bad = ('zarr', 'ebt_policy.datasets', 'ebt_policy.envs', 'ebt_policy.training'); "
        "found = [m for m in sys.modules if m.split('.')[0] == 'zarr' or m.startswith(bad[1:])]; "
        "assert not found, found"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
