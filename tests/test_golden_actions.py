"""Golden actions: a committed checkpoint must plan exactly the chunks recorded for it.

``tests/data/ebt_v1_tiny`` is a checkpoint written by the code before the policy registry (format
version 1, flat policy config); ``golden_v1_tiny.safetensors`` holds observation windows, the
initial noise and the chunks that code planned from them (``tests/data/make_golden_v1.py`` made
both). Eager fp32 on the CPU must reproduce them to rounding (bit for bit on the recording
machine's CPU kernels, within ``ATOL`` on another instruction set): this guards checkpoint
conversion, the refactor, and every later speed-up of inference (a faster path must match or be
opt-in).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ebt_policy import load_policy
from ebt_policy.policies import EBTPolicy, save_pretrained
from ebt_policy.policies.checkpoint import read_checkpoint_config
from ebt_policy.policies.schema import FORMAT_VERSION

DATA = Path(__file__).parent / "data"
CHECKPOINT_V1 = DATA / "ebt_v1_tiny"
GOLDEN = DATA / "golden_v1_tiny.safetensors"
# Robot units. The recording machine and this one may run different CPU kernels (AVX-512 vs
# AVX2: float sums in another order); the chunks agree to ~2e-6 then. Bit-for-bit equality of the
# engine's exact mode with the reference descent is checked on this machine
# (tests/test_inference_engine.py).
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


def _meta() -> dict[str, str]:
    with safe_open(str(GOLDEN), framework="pt") as f:
        return f.metadata()


def _assert_plans_golden(policy: EBTPolicy, golden: dict[str, torch.Tensor]) -> None:
    obs = {"state": golden["obs.state"].numpy()}
    fixed = policy.predict_chunk(obs, init_chunk=golden["noise"])
    np.testing.assert_allclose(fixed.chunk, golden["chunk"].numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(fixed.energy, golden["energy"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(fixed.steps, golden["steps"].numpy())
    np.testing.assert_array_equal(fixed.actions, fixed.chunk[:, 1:9])

    meta = _meta()
    adaptive = policy.predict_chunk(
        obs,
        init_chunk=golden["noise"],
        descent_steps=int(meta["adaptive.descent_steps"]),
        descent_min_grad=float(meta["adaptive.descent_min_grad"]),
    )
    assert adaptive.steps.tolist() == golden["adaptive.steps"].tolist() == [20, 3, 6, 5, 5]
    # Row 0 runs all 20 steps without converging: at this checkpoint's step size the descent
    # amplifies the last bit of a sum to O(1) by step 20, so that row agrees only where the CPU
    # runs the kernels of the recording machine; the rows that stopped agree to rounding.
    np.testing.assert_allclose(
        adaptive.chunk[1:], golden["adaptive.chunk"].numpy()[1:], atol=1e-4, rtol=0
    )

    seed = int(meta["seeded.seed"])
    seeded = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(seeded.chunk, golden["seeded.chunk"].numpy(), atol=ATOL, rtol=0)


def test_format_1_checkpoint_loads_and_plans_the_recorded_chunks(golden) -> None:
    policy = load_policy(CHECKPOINT_V1)
    assert isinstance(policy, EBTPolicy) and not policy.training
    # the flat version-1 config came back nested, the stopping rule under its new names
    assert policy.config.d_model == 32 and policy.config.preset == "tiny"
    descent = policy.config.descent
    assert (descent.train_steps_base, descent.train_steps_extra) == (3, 1)
    assert (descent.descent_steps, descent.descent_min_grad) == (2, 1e-3)
    _assert_plans_golden(policy, golden)


def test_resaved_in_the_current_format_plans_the_same_chunks(golden, tmp_path: Path) -> None:
    policy = load_policy(CHECKPOINT_V1)
    out = save_pretrained(policy, tmp_path / "v2", shape_meta=policy.shapes)
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["policy"]["config"]["descent"]["descent_steps"] == 2
    assert "max_steps" not in config["policy"]["config"]
    assert (
        config["shape_meta"]
        == json.loads((CHECKPOINT_V1 / "config.json").read_text())["shape_meta"]
    )
    _assert_plans_golden(load_policy(out), golden)


def test_reading_a_format_1_config_converts_it_whole() -> None:
    """Resuming an old run compares against this: policy config and overrides both nested."""
    config = read_checkpoint_config(CHECKPOINT_V1)
    assert config["format_version"] == FORMAT_VERSION
    policy_config = config["policy"]["config"]
    assert policy_config["descent"]["descent_min_grad"] == 1e-3
    assert not {"alpha", "max_steps", "min_grad"} & set(policy_config)
    assert config["train_config"]["policy_overrides"] == {"d_model": 32}
