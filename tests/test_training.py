"""Training: loss falls, exact resume after an interruption, DDP on gloo, CLI, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt_policy.errors import ConfigError
from ebt_policy.training import TrainConfig, train
from ebt_policy.training import loop as train_loop
from ebt_policy.training.optim import ema_decay, make_scheduler

# Small MLP energy: the cheap preset, shrunk further so each step takes milliseconds.
MLP_SMALL = {"mlp_hidden": 64, "mlp_layers": 2}


def make_toy_store(path: Path, n_episodes: int = 10, length: int = 30, seed: int = 0) -> Path:
    """A deterministic task: the action is a fixed smooth function of the 3-D state."""
    from ebt_policy.datasets import EpisodeStore

    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(
        path,
        {
            "task": {"name": "toy", "env_kwargs": {}},
            "control_hz": 10,
            "obs_keys": {"low_dim": ["state"], "rgb": []},
        },
    )
    w = np.array([[0.5, -0.3], [0.2, 0.8], [-0.4, 0.1]], dtype=np.float32)
    for _ in range(n_episodes):
        s = rng.uniform(-1, 1, size=3).astype(np.float32)
        states, actions = [], []
        for _t in range(length):
            a = np.tanh(3 * s @ w).astype(np.float32)
            states.append(s.copy())
            actions.append(a)
            s = (0.9 * s + 0.1 * np.concatenate([a, a[:1]])).astype(np.float32)
        store.add_episode({"action": np.stack(actions), "state": np.stack(states)})
    return path


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr")


def _cfg(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        dataset=str(store),
        out=str(out),
        preset="mlp",
        policy_overrides=dict(MLP_SMALL),
        steps=40,
        batch_size=16,
        device="cpu",
        log_every=1,
        save_every=20,
        val_every=20,
        val_batches=2,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_transformer_loss_falls(toy_store: Path, tmp_path: Path) -> None:
    run = train(
        _cfg(
            toy_store,
            tmp_path / "run",
            preset="tiny",
            policy_overrides={},
            steps=25,
            warmup_steps=3,
            save_every=0,
            val_every=0,
        )
    )
    losses = [m["loss"] for m in _metrics(run)]
    assert len(losses) == 25
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    assert last < 0.5 * first, f"loss did not fall clearly: first {first:.3f}, last {last:.3f}"
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["policy"]["config"]["energy"] == "transformer"
    assert (run / "checkpoints" / "last" / "model.safetensors").exists()


class Interrupted(Exception):
    pass


def test_resume_gives_the_same_loss_curve(
    toy_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 steps straight; 3 epochs of 16-window batches, so resuming crosses epoch boundaries
    full = train(_cfg(toy_store, tmp_path / "full"))

    # the same command, killed during step 27 (after the step-20 checkpoint), then resumed
    real_step = train_loop.train_step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 27:
            raise Interrupted
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", crashing_step)
    with pytest.raises(Interrupted):
        train(_cfg(toy_store, tmp_path / "resumed"))
    monkeypatch.setattr(train_loop, "train_step", real_step)
    last = tmp_path / "resumed" / "checkpoints" / "last"
    assert last.resolve().name == "step_00000020"
    # the metrics file holds the steps the killed run logged past the checkpoint
    assert max(m["step"] for m in _metrics(tmp_path / "resumed")) == 26

    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(_cfg(toy_store, tmp_path / "resumed"))
    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(toy_store, tmp_path / "resumed", resume=True, lr=5e-4))
    resumed = train(_cfg(toy_store, tmp_path / "resumed", resume=True))

    a, b = _metrics(full), _metrics(resumed)
    assert [m["step"] for m in b] == list(range(1, 41))
    np.testing.assert_array_equal([m["loss"] for m in a], [m["loss"] for m in b])
    np.testing.assert_array_equal([m["lr"] for m in a], [m["lr"] for m in b])
    assert a[-1]["val_loss"] == b[-1]["val_loss"]

    from safetensors.torch import load_file

    for name in ("model.safetensors", "training_state/model.safetensors"):
        wa = load_file(full / "checkpoints" / "last" / name)
        wb = load_file(resumed / "checkpoints" / "last" / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs after resume"

    # a longer run from the finished one: the schedule is re-planned for the new total
    longer = train(_cfg(toy_store, tmp_path / "resumed", resume=True, steps=50))
    c = _metrics(longer)
    assert [m["step"] for m in c] == list(range(1, 51))
    assert c[:40] == b  # the first 40 steps' lines are kept
    reference = make_scheduler(
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3),
        _cfg(toy_store, tmp_path, steps=50, warmup_steps=8).resolved(),  # warm-up kept: 40 // 5
    )
    expected_lr = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stepping without optimiser steps
        for _ in range(50):
            expected_lr.append(reference.get_last_lr()[0])
            reference.step()
    np.testing.assert_allclose([m["lr"] for m in c[40:]], expected_lr[40:], rtol=1e-9)


def test_minutes_budget_stops_and_saves(toy_store: Path, tmp_path: Path) -> None:
    run = train(_cfg(toy_store, tmp_path / "run", steps=10_000, minutes=1e-5))
    progress = json.loads(
        (run / "checkpoints" / "last" / "training_state" / "progress.json").read_text()
    )
    assert 1 <= progress["step"] < 10_000


def test_tensorboard_curves_match_the_metrics_log(toy_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_cfg(toy_store, tmp_path / "run", steps=12, save_every=0, val_every=6))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "val_loss", "steps_per_s"} <= tags and "time" not in tags
    metrics = _metrics(run)
    tb_loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in tb_loss] == [m["step"] for m in metrics]
    np.testing.assert_allclose([v for _, v in tb_loss], [m["loss"] for m in metrics], rtol=1e-6)
    assert [e.step for e in events.Scalars("val_loss")] == [6, 12]


def test_amp_bf16_trains_through_second_order_grads(toy_store: Path, tmp_path: Path) -> None:
    # autocast must not break the create_graph=True descent: loss finite and falling
    run = train(_cfg(toy_store, tmp_path / "run", amp=True, steps=30, save_every=0))
    losses = [m["loss"] for m in _metrics(run)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3])


def test_ema_warmup_schedule() -> None:
    cfg = TrainConfig(dataset="x", out="y")
    decays = [ema_decay(k, cfg) for k in (1, 2, 10, 100, 10_000, 10**9)]
    assert decays[0] == 0.0  # the first update copies the weights
    assert all(a < b for a, b in zip(decays[:-1], decays[1:], strict=False))
    assert decays[3] == pytest.approx(1 - 100**-0.75, rel=1e-2)
    assert decays[-1] == cfg.ema_max_decay


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"preset": "huge"}, "preset"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"steps": 10, "warmup_steps": 10}, "warmup_steps"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(dataset="x", out="y", **kwargs)


def test_cli_train_with_policy_overrides_then_load(toy_store: Path, tmp_path: Path) -> None:
    from ebt_policy import load_policy
    from ebt_policy.cli import main

    out = tmp_path / "run"
    argv = [
        "train", "--dataset", str(toy_store), "--out", str(out), "--preset", "mlp",
        "--steps", "6", "--batch-size", "8", "--device", "cpu", "--no-progress",
        "--policy-cfg.mlp-hidden", "32", "--policy-cfg.descent.descent-steps", "4",
        "--save-every", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["policy_overrides"] == {"mlp_hidden": 32, "descent": {"descent_steps": 4}}
    assert saved["policy"]["config"]["mlp_hidden"] == 32
    policy = load_policy(out)
    assert policy.config.mlp_hidden == 32 and policy.config.descent.descent_steps == 4
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        "step_00000003",
        "step_00000006",
    ]
    # a bad flag value is one line on stderr and exit status 2, no traceback
    assert main([*argv[:-2], "--weight-decay", "-1"]) == 2


def test_ddp_two_cpu_processes_gloo(toy_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ebt_policy.cli", "train", "--dataset", str(toy_store), "--out", str(out),
        "--preset", "mlp", "--policy-cfg.mlp-hidden", "32", "--steps", "8", "--batch-size", "16",
        "--device", "cpu", "--no-progress", "--log-every", "1", "--save-every", "4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["per_process_batch_size"] == 8
    steps = [m["step"] for m in _metrics(out)]
    assert steps == list(range(1, 9))  # one writer: no duplicated lines
    state = torch.load(
        out / "checkpoints" / "last" / "training_state" / "state.pt", weights_only=True
    )
    assert len(state["rng"]) == 2  # both ranks' RNG states, gathered to rank 0
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    from ebt_policy import load_policy

    policy = load_policy(out)
    obs = {"state": np.zeros((1, policy.n_obs_steps, 3), dtype=np.float32)}
    assert np.isfinite(policy.predict_chunk(obs).actions).all()


def _long_train_cmd(store: Path, out: Path, *extra: str) -> list[str]:
    """`ebt-policy train` of a small MLP for 100000 steps (to be stopped), resumable."""
    return [
        sys.executable, "-m", "ebt_policy.cli", "train", "--dataset", str(store),
        "--out", str(out), "--preset", "mlp", "--policy-cfg.mlp-hidden", "32",
        "--steps", "100000", "--warmup-steps", "2", "--batch-size", "8", "--device", "cpu",
        "--no-progress", "--resume", *extra,
    ]  # fmt: skip


def test_sigkill_mid_run_leaves_a_loadable_last_and_resume_finishes(
    toy_store: Path, tmp_path: Path
) -> None:
    import signal
    import time

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _long_train_cmd(toy_store, out, "--save-every", "1", "--keep-checkpoints", "2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # checkpoints every step: kill while it is writing them
        while len(list((out / "checkpoints").glob("step_*"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from ebt_policy import load_policy

    policy = load_policy(out)  # 'last' names a complete checkpoint
    step = json.loads((out / "checkpoints" / "last" / "config.json").read_text())["step"]
    assert step >= 2
    cmd[cmd.index("100000")] = str(step + 3)
    cmd[cmd.index("--save-every") + 1] = "0"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "checkpoints" / "last" / "config.json").read_text())["step"]
    assert final == step + 3
    assert policy.n_obs_steps == 2


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_the_current_step_and_resume_continues(
    toy_store: Path, tmp_path: Path, sig: str
) -> None:
    import signal
    import time

    out = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _long_train_cmd(toy_store, out, "--save-every", "0", "--log-every", "1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and (
        time.monotonic() < deadline
    ):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    # the shell's 128 + signum: supervisors can tell Ctrl-C (130) from SIGTERM (143)
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), err.decode()[-2000:]
    assert "--resume continues" in err.decode() and "Traceback" not in err.decode()
    # no periodic checkpoints (--save-every 0): the interruption itself saved one
    step = json.loads((out / "checkpoints" / "last" / "config.json").read_text())["step"]
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert step == last_logged >= 3
    cmd[cmd.index("100000")] = str(step + 2)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        json.loads((out / "checkpoints" / "last" / "config.json").read_text())["step"] == step + 2
    )


def test_normalisation_stats_come_from_the_store_metadata(tmp_path: Path) -> None:
    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore, compute_stats

    path = make_toy_store(tmp_path / "s.zarr", n_episodes=4, length=20)
    stats = compute_stats(EpisodeStore.open(path), write=False)
    # widen the action range in the metadata: the policy must use these, not recompute
    custom = {k: {n: np.asarray(v).tolist() for n, v in s.items()} for k, s in stats.items()}
    custom["action"]["min"] = [-2.0, -2.0]
    custom["action"]["max"] = [3.0, 3.0]
    EpisodeStore.open(path, mode="a").update_metadata(stats=custom)
    run = train(_cfg(path, tmp_path / "run", steps=2, val_every=0, save_every=0))
    norm = load_policy(run).normalizer.state_dict()
    np.testing.assert_array_equal(norm["stats.action.min"], [-2.0, -2.0])
    np.testing.assert_array_equal(norm["stats.action.max"], [3.0, 3.0])
    np.testing.assert_allclose(norm["stats.state.max"], stats["state"]["max"], rtol=1e-6)


@pytest.mark.slow
def test_ddp_resume_gives_the_same_loss_curve(toy_store: Path, tmp_path: Path) -> None:
    """2 gloo processes: 8 steps straight vs stopped after step 1 (time budget) and resumed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out: Path, *extra: str) -> None:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "ebt_policy.cli", "train", "--dataset", str(toy_store), "--out", str(out),
            "--preset", "mlp", "--policy-cfg.mlp-hidden", "32", "--steps", "8",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--log-every", "1",
            "--save-every", "4", *extra,
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(tmp_path / "a")
    run(tmp_path / "b", "--minutes", "1e-6")
    assert len(_metrics(tmp_path / "b")) < 8
    run(tmp_path / "b", "--resume")
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [m["loss"] for m in a] == [m["loss"] for m in b]


def test_batch_stream_resumed_mid_epoch_continues_the_same_order(toy_store: Path) -> None:
    """Starting at (epoch, batch) yields exactly what a stream from the start yields from there."""
    from types import SimpleNamespace

    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.training.data import batch_stream, make_data
    from ebt_policy.training.distributed import DistInfo

    cfg = _cfg(toy_store, Path("unused")).resolved()
    policy = SimpleNamespace(n_obs_steps=2, horizon=4)
    store = EpisodeStore.open(toy_store)

    def actions(epoch: int, batch_in_epoch: int, n: int) -> list[tuple[int, int, torch.Tensor]]:
        data = make_data(cfg, store, ["state"], policy, DistInfo(), torch.device("cpu"))
        stream = batch_stream(data, cfg.seed, 0, epoch, batch_in_epoch)
        return [(e, b, batch["action"]) for (e, b, batch), _ in zip(stream, range(n), strict=False)]

    full = actions(0, 0, 40)
    per_epoch = max(b for e, b, _ in full if e == 0)
    assert full[per_epoch][:2] == (1, 1)  # the next epoch starts after the last full batch
    start = per_epoch + 3  # part-way through epoch 1
    tail = actions(*full[start - 1][:2], len(full) - start)
    assert [x[:2] for x in tail] == [x[:2] for x in full[start:]]
    for (_, _, a), (_, _, b) in zip(tail, full[start:], strict=True):
        assert torch.equal(a, b)
