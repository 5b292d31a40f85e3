"""How tests/data/ebt_v1_tiny and golden_v1_tiny.safetensors were made (kept as a record).

Run once with the code from before the policy registry (format_version 1, flat policy config)::

    cd <tree before the refactor> && PYTHONPATH=$PWD python <this file> OUT_DIR

It trains a small transformer-energy EBT policy for a few steps on a toy store, keeps the
deployable part of its last checkpoint (``config.json`` + ``model.safetensors``) and records, for
fixed observation windows and fixed initial noise, the chunks that code plans. The golden-actions
test (tests/test_golden_actions.py) asserts today's code plans exactly the same chunks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ebt_policy import load_policy
from ebt_policy.datasets import EpisodeStore
from ebt_policy.training import TrainConfig, train


def toy_store(path: Path) -> Path:
    """Six episodes whose action is a fixed function of the state (as in test_checkpoint.py)."""
    rng = np.random.default_rng(1)
    store = EpisodeStore.create(path, {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(6):
        state = rng.uniform(-1, 1, size=(25, 4)).astype(np.float32)
        action = np.tanh(state[:, :2] - state[:, 2:]).astype(np.float32)
        store.add_episode({"action": action, "state": state})
    return path


def main(out: Path) -> None:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    cfg = TrainConfig(
        dataset=str(toy_store(work / "toy.zarr")),
        out=str(work / "run"),
        preset="tiny",
        policy_overrides={"d_model": 32},
        steps=20,
        batch_size=8,
        device="cpu",
        val_fraction=0.0,
        progress=False,
        tensorboard=False,
    )
    run = train(cfg)
    ckpt = out / "ebt_v1_tiny"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / "checkpoints" / "last" / name, ckpt / name)

    policy = load_policy(ckpt)
    rng = np.random.default_rng(7)
    B = 5
    state = rng.uniform(-1.2, 1.2, size=(B, policy.n_obs_steps, 4)).astype(np.float32)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(B, policy.horizon, policy.action_dim, generator=gen)
    obs = {"state": state}
    fixed = policy.predict_chunk(obs, init_chunk=noise)
    # 20 steps at most, stopping below a gradient norm of 5e-3: some rows stop early, one runs to 20
    adaptive = policy.predict_chunk(obs, init_chunk=noise, max_steps=20, min_grad=5e-3)
    seeded = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(11))
    tensors = {
        "obs.state": torch.from_numpy(state),
        "noise": noise,
        "chunk": torch.from_numpy(fixed.chunk),
        "energy": torch.from_numpy(fixed.energy),
        "steps": torch.from_numpy(fixed.steps),
        "adaptive.chunk": torch.from_numpy(adaptive.chunk),
        "adaptive.steps": torch.from_numpy(adaptive.steps),
        "seeded.chunk": torch.from_numpy(seeded.chunk),
    }
    meta = {"adaptive.descent_steps": "20", "adaptive.descent_min_grad": "5e-3"}
    meta["seeded.seed"] = "11"
    save_file(tensors, str(out / "golden_v1_tiny.safetensors"), metadata=meta)
    shutil.rmtree(work)
    print({k: tuple(v.shape) for k, v in tensors.items()}, adaptive.steps.tolist())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
