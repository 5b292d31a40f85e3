"""Warm start in the deploy loop: the inference thread shifts the previous chunk by the control
steps between the two plans' newest frames (the loop plans on a clock, not every Ta steps),
starts from noise for an episode's first plan and for an energy re-plan, and `ebt-policy deploy
--warm-start --best-of K` runs an EBT policy that way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_deploy_cli import _untrained_twogoal  # tests/ is on sys.path (rootdir)

from ebt_policy.cli import main as cli_main
from ebt_policy.deploy.inference import Chunk, InferenceWorker
from ebt_policy.errors import EbtPolicyError
from ebt_policy.inference import shift_chunk

DT = 0.02


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ebt_checkpoint(tmp_path_factory) -> Path:
    return _untrained_twogoal("ebt", tmp_path_factory.mktemp("ckpt") / "twogoal-ebt")


def _frame(t: float, rng: np.random.Generator) -> dict:
    return {"agent_pos": rng.uniform(-1, 1, 2).astype(np.float32),
            "agent_vel": rng.uniform(-1, 1, 2).astype(np.float32), "timestamp": t}  # fmt: skip


def test_the_inference_thread_shifts_by_the_steps_between_plans(ebt_checkpoint: Path) -> None:
    from ebt_policy import load_policy

    policy = load_policy(ebt_checkpoint)
    engine = policy.set_engine(warm_start=True, warm_noise=0.0)
    starts: list[torch.Tensor] = []
    initial = engine._initial_chunks

    def spy(*args, **kwargs):
        x0 = initial(*args, **kwargs)
        starts.append(x0.clone())
        return x0

    engine._initial_chunks = spy
    rng = np.random.default_rng(0)
    worker = InferenceWorker(policy, DT)
    try:
        worker.start_episode(_frame(0.0, rng), seed=3)
        worker.request()
        first = worker.wait(30.0)
        assert isinstance(first, Chunk)
        chunk0 = engine._warm[0].clone()
        for i in range(1, 4):  # three control steps later
            worker.observe(_frame(i * DT, rng))
        worker.request()
        assert isinstance(worker.wait(30.0), Chunk)
        assert torch.equal(starts[1][0], shift_chunk(chunk0, 3))
        assert policy.n_action_steps != 3  # the loop's own shift, not the policy's Ta
        chunk1 = engine._warm[0].clone()
        worker.request(replanned=True)  # an energy re-plan: from noise, not the rejected plan
        assert isinstance(worker.wait(30.0), Chunk)
        worker.start_episode(_frame(1.0, rng), seed=4)  # a new episode: from noise
        worker.request()
        assert isinstance(worker.wait(30.0), Chunk)
    finally:
        worker.close()
    for start in starts[2:]:  # not the previous plan, shifted or not
        assert not torch.allclose(start[0], shift_chunk(chunk1, 0), atol=0.1)
    with pytest.raises(EbtPolicyError, match="n_actions must be >= 0, got -1"):
        engine.advance(0, -1)
    # a cold start is the row's own N(0, I) draw: RMS about 1
    assert all(0.5 < float(s.pow(2).mean().sqrt()) < 1.5 for s in (starts[0], *starts[2:]))


def test_deploy_cli_plans_with_warm_start_and_best_of(ebt_checkpoint: Path, capsys) -> None:
    argv = ["deploy", "--checkpoint", str(ebt_checkpoint), "--robot", "sim:twogoal"]
    argv += ["--rate", "50", "--duration", "0.4", "--warm-start", "--best-of", "2"]
    assert cli_main(argv) == 0, capsys.readouterr()


@pytest.mark.slow  # torch.compile of the checkpoint's transformer in the warm-up plan
def test_deploy_cli_plans_with_a_compiled_planner(
    ebt_checkpoint: Path, capsys, monkeypatch
) -> None:
    argv = ["deploy", "--checkpoint", str(ebt_checkpoint), "--robot", "sim:twogoal"]
    from ebt_policy.inference import engine as engine_module

    built = []
    original = engine_module.InferenceEngine._compiled_chunk

    def recording(self, n, K):  # the compiled graph the planner used
        chunk = original(self, n, K)
        built.append(chunk)
        return chunk

    monkeypatch.setattr(engine_module.InferenceEngine, "_compiled_chunk", recording)
    argv += ["--rate", "50", "--duration", "0.4", "--compile", "--cpp-wrapper"]
    assert cli_main(argv) == 0, capsys.readouterr()
    assert built and all(chunk.cpp_wrapper for chunk in built)


def test_deploy_cli_refuses_warm_start_for_a_policy_without_descent(tmp_path: Path, capsys) -> None:
    mse = _untrained_twogoal("mse", tmp_path / "mse")
    argv = ["deploy", "--checkpoint", str(mse), "--robot", "sim:twogoal", "--warm-start"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--warm-start/--best-of/--compile apply to EBT policies" in err[0]
    assert cli_main([*argv[:-1], "--best-of", "0"]) == 2
    assert "--best-of must be >= 1" in capsys.readouterr().err
    assert cli_main([*argv[:-1], "--compile"]) == 2
    assert "--warm-start/--best-of/--compile apply to EBT policies" in capsys.readouterr().err
    assert cli_main([*argv[:-1], "--cpp-wrapper"]) == 2
    assert "--cpp-wrapper: needs --compile" in capsys.readouterr().err
