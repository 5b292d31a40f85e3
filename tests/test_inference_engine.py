"""The inference engine: exact mode = the reference descent bit for bit (and the golden chunks
to rounding), faster modes within stated tolerances, warm starts that follow their row and
reset, best-of-K picking the lowest energy, batch-independent rows, the stopping rules, and the
CUDA-graph path (only where CUDA exists)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ebt_policy import load_policy
from ebt_policy.errors import ConfigError
from ebt_policy.inference import EngineOptions, InferenceEngine, shift_chunk
from ebt_policy.policies import make_policy, make_policy_config

GOLDEN = "tests/data/golden_v1_tiny.safetensors"
CHECKPOINT = "tests/data/ebt_v1_tiny"
DA, TA = 7, 8
# Tolerances of the faster modes against eager fp32 (normalised action units; the chunks are
# O(1)). Compiled kernels only reorder float sums; bf16 keeps ~3 significant digits.
COMPILED_ATOL = 1e-4
BF16_ATOL = 5e-2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_policy(**overrides):
    meta = {"obs": {"state": {"shape": [19], "type": "low_dim"}}, "action": {"shape": [DA]}}
    stats = {
        key: {"min": -np.ones(d, np.float32), "max": np.ones(d, np.float32),
              "mean": np.zeros(d, np.float32), "std": np.ones(d, np.float32),
              "q01": -np.ones(d, np.float32), "q99": np.ones(d, np.float32)}
        for key, d in (("state", 19), ("action", DA))
    }  # fmt: skip
    torch.manual_seed(0)
    return make_policy(make_policy_config("ebt", "tiny", **overrides), meta, stats).eval()


def observations(B: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"state": rng.uniform(-1, 1, (B, 2, 19)).astype(np.float32)}


def tensors(policy, obs):
    return policy.obs_tensors(obs)


# ---------------------------------------------------------------------------- exact mode
@pytest.mark.parametrize("freeze", [True, False])
def test_exact_mode_plans_the_reference_descent_bit_for_bit(freeze: bool) -> None:
    golden = load_file(GOLDEN)
    policy = load_policy(CHECKPOINT)
    engine = InferenceEngine(policy, EngineOptions(freeze=freeze))
    obs = tensors(policy, {"state": golden["obs.state"].numpy()})
    result = engine.plan(obs, init_chunk=golden["noise"])
    assert engine.last_path == "eager"
    assert all(p.requires_grad for p in policy.parameters())  # frozen only while planning
    # the reference: EnergyDescent.step (the training code's step, without training noise)
    with torch.no_grad():
        context = policy.encode(policy._normalize_obs(obs), augment=False)
    energy = policy.energy_fn(context, fused=policy.config.fused_attention_inference)
    x = golden["noise"].clone()
    v = torch.zeros_like(x)
    for _ in range(policy.config.descent.descent_steps):
        x, v, e, _ = policy.descent.step(energy, x, v, training=False)
    assert torch.equal(result.chunk, x) and torch.equal(result.energy, e)
    # and the recorded chunks to rounding (another CPU may sum in another order)
    chunk = policy.normalizer.unnormalize("action", result.chunk)
    torch.testing.assert_close(chunk, golden["chunk"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.energy, golden["energy"], atol=1e-6, rtol=0)


def test_options_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match="best_of"):
        EngineOptions(best_of=0)
    with pytest.raises(ConfigError, match="warm_noise"):
        EngineOptions(warm_noise=float("nan"))
    with pytest.raises(ConfigError, match="cpp_wrapper needs compile=True"):
        EngineOptions(cpp_wrapper=True)
    with pytest.raises(ConfigError, match="min_energy_change"):
        tiny_policy().set_engine(min_energy_change=-1.0)


# ---------------------------------------------------------------------------- faster modes
def test_bf16_autocast_stays_within_its_tolerance_of_fp32() -> None:
    policy = tiny_policy()
    obs = tensors(policy, observations(4))
    noise = torch.randn(4, 16, DA, generator=torch.Generator().manual_seed(0))
    fp32 = InferenceEngine(policy).plan(obs, init_chunk=noise)
    bf16 = InferenceEngine(policy, EngineOptions(bf16=True)).plan(obs, init_chunk=noise)
    assert bf16.chunk.dtype == torch.float32
    assert (bf16.chunk - fp32.chunk).abs().max() < BF16_ATOL
    assert (bf16.energy - fp32.energy).abs().max() < BF16_ATOL * fp32.energy.abs().max()


@pytest.mark.slow  # torch.compile on this CPU: ~2 minutes (a whole-chunk graph and a step)
def test_compiled_paths_plan_the_eager_chunks_within_tolerance() -> None:
    policy = tiny_policy()
    obs = observations(4)
    noise = torch.randn(4, 16, DA, generator=torch.Generator().manual_seed(0))
    atol = COMPILED_ATOL * 2  # robot units: the action statistics span [-1, 1] -> x2
    adaptive = {"descent_steps": 6, "descent_min_grad": 1e-3}
    cases = (({}, {}, {}, "compiled_chunk"), (adaptive, {}, {}, "compiled"),
             ({}, {"best_of": 3}, {}, "compiled_chunk"),
             ({}, {}, {"cpp_wrapper": True}, "compiled_chunk"))  # fmt: skip
    for kwargs, options, compile_options, path in cases:
        policy.set_engine(compile=True, **options, **compile_options)
        gen = torch.Generator().manual_seed(1)  # best-of-K: the other candidates' noise
        compiled = policy.predict_chunk(obs, init_chunk=noise, generator=gen, **kwargs)
        assert policy.engine.last_path == path
        if path == "compiled_chunk":
            (chunk,) = policy.engine._compiled_chunks.values()
            assert chunk.cpp_wrapper == compile_options.get("cpp_wrapper", False)
        policy.set_engine(**options)
        gen = torch.Generator().manual_seed(1)
        eager = policy.predict_chunk(obs, init_chunk=noise, generator=gen, **kwargs)
        np.testing.assert_allclose(compiled.chunk, eager.chunk, atol=atol, rtol=0)
        np.testing.assert_allclose(compiled.energy, eager.energy, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(compiled.steps, eager.steps)


def test_a_fixed_step_loop_reports_the_first_nonfinite_step() -> None:
    from ebt_policy.inference.fixed import fixed_result, run_fixed_steps
    from ebt_policy.policies.ebt.descent import NonFiniteEnergyError

    def step(context, x, v):  # the energy turns NaN from the second step on
        e = torch.where(x.abs().amax(dim=(1, 2)) > 0.5, float("nan"), 0.0)
        return x + 1.0, v, e, torch.ones_like(x)

    x0 = torch.zeros(2, 3, 1)
    x, e, gnorm, bad = run_fixed_steps(step, None, x0, 4)
    assert int(bad) == 1 and torch.equal(x, x0 + 4)
    with pytest.raises(NonFiniteEnergyError, match="step 1 of 4"):
        fixed_result(x, e, gnorm, bad, 4, "inference")
    ok = fixed_result(*run_fixed_steps(step, None, x0, 1), 1, "inference")
    assert ok.steps.tolist() == [1, 1] and torch.equal(ok.chunk, x0 + 1)


# ---------------------------------------------------------------------------- warm start
def test_warm_start_starts_from_the_shifted_previous_chunk() -> None:
    policy = tiny_policy()
    engine = InferenceEngine(policy, EngineOptions(warm_start=True, warm_noise=0.0))
    obs = tensors(policy, observations(2))
    first = engine.plan(obs, rows=[0, 1])
    assert engine.has_warm_start(0) and engine.has_warm_start(1)
    second = engine.plan(obs, rows=[0, 1])
    shifted = torch.stack([shift_chunk(first.chunk[b], TA) for b in range(2)])
    expected = InferenceEngine(policy).plan(obs, init_chunk=shifted)
    torch.testing.assert_close(second.chunk, expected.chunk, atol=1e-6, rtol=0)


def test_shift_chunk_drops_executed_actions_and_repeats_the_last() -> None:
    chunk = torch.arange(16.0)[:, None].repeat(1, 2)  # (Tp, Da), action i = i
    out = shift_chunk(chunk, 8)
    assert out[:, 0].tolist() == [*range(8, 16), *[15] * 8]
    assert shift_chunk(chunk, 20)[:, 0].tolist() == [15.0] * 16


def test_warm_start_resets_after_reset_and_per_row_on_a_new_episode() -> None:
    policy = tiny_policy()
    policy.set_engine(warm_start=True)
    obs = observations(2)
    for row in (0, 1):
        policy.start_episode(row, 10 + row)
    cold = policy.predict_chunk(obs, rows=[0, 1]).chunk
    warm = policy.predict_chunk(obs, rows=[0, 1])
    assert policy.engine.has_warm_start(0) and warm.uncertainty is None
    policy.start_episode(1, 11)  # row 1 starts again: only its warm start goes
    assert policy.engine.has_warm_start(0) and not policy.engine.has_warm_start(1)
    np.testing.assert_array_equal(policy.predict_chunk(obs, rows=[0, 1]).chunk[1], cold[1])
    policy.reset()
    assert not policy.engine.has_warm_start(0)
    for row in (0, 1):
        policy.start_episode(row, 10 + row)
    again = policy.predict_chunk(obs, rows=[0, 1]).chunk
    np.testing.assert_array_equal(again, cold)  # from noise, the same seeds: the same chunks
    assert np.abs(warm.chunk - cold).max() > 1e-4


# ---------------------------------------------------------------------------- best of K
def test_best_of_k_returns_the_lowest_energy_candidate() -> None:
    K = 4
    policy = tiny_policy()
    obs = observations(2, seed=3)
    policy.set_engine(best_of=K)
    for row in (0, 1):
        policy.start_episode(row, 50 + row)
    best = policy.predict_chunk(obs, rows=[0, 1])
    policy.set_engine()
    for row in (0, 1):  # the row's generator drew its K candidates as one (K, Tp, Da) sample
        noise = torch.randn((K, 16, DA), generator=torch.Generator().manual_seed(50 + row))
        one = {k: np.repeat(v[row : row + 1], K, axis=0) for k, v in obs.items()}
        each = policy.predict_chunk(one, init_chunk=noise)
        k = int(np.argmin(each.energy))
        assert best.energy[row] == pytest.approx(each.energy.min(), abs=1e-6)
        np.testing.assert_allclose(best.chunk[row], each.chunk[k], atol=1e-5, rtol=0)
        assert (each.energy >= best.energy[row] - 1e-6).all()
        # the candidates' disagreement (the normaliser here is the identity on [-1, 1])
        rms = np.sqrt(((each.chunk - each.chunk.mean(axis=0)) ** 2).mean())
        assert best.spread[row] == pytest.approx(rms, rel=1e-4)
    assert policy.predict_chunk(obs).spread is None  # one candidate: nothing to compare


# ---------------------------------------------------------------------------- batching
def test_rows_do_not_depend_on_the_batch_with_warm_start_and_best_of_k() -> None:
    policy = tiny_policy()
    policy.set_engine(warm_start=True, best_of=3)
    obs = observations(8, seed=4)
    for row in range(8):
        policy.start_episode(row, 200 + row)
    together = [policy.predict_chunk(obs, rows=list(range(8))).chunk[5] for _ in range(3)]
    policy.reset()
    policy.start_episode(5, 205)
    alone_obs = {k: v[5:6] for k, v in obs.items()}
    alone = [policy.predict_chunk(alone_obs, rows=[5]).chunk[0] for _ in range(3)]
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, t, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- stopping rules
def test_energy_change_stop_and_per_chunk_steps() -> None:
    policy = tiny_policy()
    obs = observations(3)
    plain = policy.predict_chunk(obs, descent_steps=20, descent_min_grad=0.0)
    assert plain.steps.tolist() == [20, 20, 20]
    # any change below 1e9 (all of them): two steps to measure one change, then the final one
    policy.set_engine(min_energy_change=1e9)
    stopped = policy.predict_chunk(obs, descent_steps=20, descent_min_grad=0.0)
    assert stopped.steps.tolist() == [3, 3, 3]
    policy.set_engine(min_energy_change=1e-3)
    some = policy.predict_chunk(obs, descent_steps=20, descent_min_grad=0.0)
    assert ((some.steps >= 3) & (some.steps <= 20)).all()


def test_reject_uphill_never_ends_a_row_above_its_first_energy() -> None:
    policy = tiny_policy()
    obs = tensors(policy, observations(4))
    noise = torch.randn(4, 16, DA, generator=torch.Generator().manual_seed(1))
    engine = InferenceEngine(policy, EngineOptions(reject_uphill=True))
    assert not engine.options.calibrated  # another rule than a calibration measured
    res = engine.plan(obs, init_chunk=noise, descent_steps=20, descent_min_grad=0.0)
    first = InferenceEngine(policy).plan(obs, init_chunk=noise, descent_steps=1)  # E at the start
    assert (res.energy <= first.energy).all()
    assert engine.last_path == "eager" and (res.steps <= 20).all()


def test_a_copied_policy_gets_its_own_engine() -> None:
    policy = tiny_policy()
    policy.set_engine(best_of=2)
    policy.predict_chunk(observations(1))
    twin = copy.deepcopy(policy)
    assert twin.engine.policy is twin and twin.engine.options.best_of == 2


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_replays_the_fixed_step_descent(bf16: bool) -> None:
    policy = tiny_policy().to("cuda")
    obs = observations(4)
    noise = torch.randn(4, 16, DA, generator=torch.Generator().manual_seed(0)).cuda()
    eager = policy.predict_chunk(obs, init_chunk=noise)
    policy.set_engine(cuda_graph=True, bf16=bf16)
    for _ in range(2):  # capture, then replay
        graphed = policy.predict_chunk(obs, init_chunk=noise)
        assert policy.engine.last_path == "cuda_graph"
        atol = BF16_ATOL * 2 if bf16 else COMPILED_ATOL * 2  # robot units span [-1, 1]
        np.testing.assert_allclose(graphed.chunk, eager.chunk, atol=atol, rtol=0)
    assert graphed.steps.tolist() == [policy.config.descent.descent_steps] * 4
    adaptive = policy.predict_chunk(obs, descent_steps=20, descent_min_grad=1e-3)
    assert policy.engine.last_path == "eager" and (adaptive.steps <= 20).all()


# ---------------------------------------------------------------------------- eval flags
def test_eval_plans_with_warm_start_and_best_of_k(tmp_path, capsys) -> None:
    """`ebt-policy eval --warm-start --best-of K` (and `--reject-uphill`) reach the engine
    through predict_chunk."""
    import json

    from ebt_policy.cli import main
    from ebt_policy.datasets import EpisodeStore, stats_from_metadata
    from ebt_policy.envs.collect import CollectConfig, collect
    from ebt_policy.policies.checkpoint import save_pretrained

    store_path = tmp_path / "demos.zarr"
    collect(CollectConfig("twogoal", 1, store_path, seed=0))
    store = EpisodeStore.open(store_path)
    shape_meta = store.shape_meta(store.metadata["obs_keys"]["low_dim"])
    cfg = make_policy_config("ebt", preset="mlp", mlp_hidden=32)
    policy = make_policy(cfg, shape_meta, stats_from_metadata(store.metadata))
    ckpt = save_pretrained(
        policy, tmp_path / "ckpt", shape_meta=shape_meta, dataset_metadata=store.metadata
    )
    out = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(ckpt), "--episodes", "2", "--max-episode-steps", "24"]
    argv += ["--json", str(out), "--warm-start", "--best-of", "3"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["n_chunks"] >= 6  # 3 chunks per episode, 2 episodes
    # every chunk record carries its candidates' disagreement
    assert all(c["spread"] > 0 for e in report["episodes"] for c in e["chunks"])
    assert main([*argv, "--best-of", "0"]) == 2
    assert "best_of must be >= 1" in capsys.readouterr().err
    # the energy-change stop reaches the engine (recorded in the result) and stops rows early
    argv_change = [*argv[:-3], "--descent-steps", "20", "--min-energy-change", "0.5"]
    assert main(argv_change) == 0
    result = json.loads(out.read_text())
    assert result["planner"]["min_energy_change"] == 0.5 and result["mean_descent_steps"] < 20
    assert main([*argv_change[:-1], "-1"]) == 2
    assert "min_energy_change must be >= 0" in capsys.readouterr().err
    argv = [*argv[:-3], "--reject-uphill", "--descent-steps", "6"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["n_chunks"] >= 6
    base = argv[:-3]
    assert main([*base, "--cpp-wrapper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cpp-wrapper: needs --compile" in err[0]
    # the compiled planner (a small MLP energy: seconds to compile) plans the same episodes
    assert main([*argv, "--compile"]) == 0
    result = json.loads(out.read_text())
    assert result["n_chunks"] >= 6
    assert result["planner"]["compile"] and not result["planner"]["cpp_wrapper"]
    # --reject-uphill with 6 steps is an adaptive rule: the compiled step in the Python loop
    assert result["planner"]["last_path"] == "compiled"
    assert main([*base, "--compile"]) == 0  # the checkpoint's fixed 2 steps
    assert json.loads(out.read_text())["planner"]["last_path"] == "compiled_chunk"
