"""`ebt-policy deploy` end to end on the simulated twogoal robot, with a recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ebt_policy.cli import main as cli_main


def _untrained_twogoal(policy_type: str, path: Path) -> Path:
    """An untrained tiny policy on twogoal's observations (fast; deploy only needs shapes)."""
    from ebt_policy.envs import get_task
    from ebt_policy.policies import make_policy, make_policy_config, save_pretrained

    spec = get_task("twogoal")
    shape_meta = {
        "obs": {k: {"shape": [2], "type": "low_dim"} for k in spec.low_dim_keys},
        "action": {"shape": [2]},
    }
    stats = {
        k: {s: [-1.0, -1.0] for s in ("min", "q01")}
        | {s: [1.0, 1.0] for s in ("max", "std", "q99")}
        | {"mean": [0.0, 0.0]}
        for k in (*spec.low_dim_keys, "action")
    }
    policy = make_policy(make_policy_config(policy_type, "tiny"), shape_meta, stats)
    save_pretrained(policy, path, shape_meta=shape_meta, dataset_metadata=spec.dataset_metadata())
    return path


@pytest.fixture(scope="module")
def twogoal_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny MSE policy on twogoal."""
    return _untrained_twogoal("mse", tmp_path_factory.mktemp("ckpt") / "twogoal")


def test_deploy_cli_runs_episodes_records_a_valid_store_and_logs_ticks(
    twogoal_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from ebt_policy.datasets import EpisodeStore

    store, log = tmp_path / "rec", tmp_path / "ticks.jsonl"
    argv = ["deploy", "--checkpoint", str(twogoal_checkpoint), "--robot", "sim:twogoal"]
    argv += ["--episodes", "2", "--rate", "50", "--duration", "0.4", "--record", str(store)]
    argv += ["--log", str(log)]
    assert cli_main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "recorded 2 episodes" in out
    with EpisodeStore.open(store) as s:
        assert s.n_episodes == 2
        assert {"action", "agent_pos", "deploy_chunk", "deploy_events"} <= set(s.keys)
        ep = s.get_episode(0)
        assert np.all(np.abs(ep["action"]) <= 1.0)
        assert np.all(np.diff(ep["deploy_tick"]) > 0)
        assert s.metadata["deploy"]["event_bits"][0] == "clipped"
    assert cli_main(["dataset", "info", str(store)]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2 * 20 and {"tick", "energy", "action", "events"} <= set(rows[0])


def test_deploy_cli_refuses_a_robot_without_the_policys_observations(
    twogoal_checkpoint: Path, capsys
) -> None:
    argv = ["deploy", "--checkpoint", str(twogoal_checkpoint), "--robot", "sim:pusht"]
    assert cli_main(argv) == 2
    assert "has no observation" in capsys.readouterr().err


def test_deploy_cli_refuses_an_unknown_robot(twogoal_checkpoint: Path, capsys) -> None:
    argv = ["deploy", "--checkpoint", str(twogoal_checkpoint), "--robot", "ur5"]
    assert cli_main(argv) == 2
    assert "sim:<task>" in capsys.readouterr().err


def test_two_processes_over_loopback(twogoal_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """`ebt-policy robot-server` in a child process, `ebt-policy deploy --robot tcp://...` here;
    SIGTERM then stops the server cleanly (exit 143)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "ebt_policy.cli", "robot-server", "--robot", "sim:twogoal"]
    cmd += ["--bind", f"tcp://127.0.0.1:{port}", "--rate", "50"]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert "serving" in server.stdout.readline()
        store = tmp_path / "rec"
        argv = ["deploy", "--checkpoint", str(twogoal_checkpoint)]
        argv += ["--robot", f"tcp://127.0.0.1:{port}", "--rate", "50", "--duration", "0.4"]
        argv += ["--record", str(store)]
        assert cli_main(argv) == 0, capsys.readouterr()
        assert "recorded 1 episodes" in capsys.readouterr().out
        assert cli_main(["dataset", "info", str(store)]) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=20)
    assert rc == 143, server.stderr.read()[-2000:]


def test_robot_server_refuses_a_non_loopback_bind_without_flag_and_token(capsys) -> None:
    argv = ["robot-server", "--robot", "sim:twogoal", "--bind", "tcp://0.0.0.0:5555"]
    assert cli_main(argv) == 2
    assert "allow-remote" in capsys.readouterr().err
    assert cli_main([*argv, "--allow-remote"]) == 2
    assert "token" in capsys.readouterr().err


def _ebt_checkpoint_with_calibration(
    dest: Path, energies: np.ndarray, best_of: int = 1, spread: np.ndarray | None = None
) -> Path:
    """An untrained tiny EBT policy on twogoal, calibrated on ``energies`` (and with best-of-K
    on ``spread``)."""
    from ebt_policy.policies import load_policy
    from ebt_policy.policies.calibration import Calibration, weights_sha256, write_calibration

    d = load_policy(_untrained_twogoal("ebt", dest)).config.descent
    sha = weights_sha256(dest / "model.safetensors")
    calibration = Calibration.from_values(
        energies, np.abs(energies), score="energy", descent_steps=d.descent_steps,
        descent_min_grad=d.descent_min_grad, weights_sha256=sha, best_of=best_of, spread=spread,
    )  # fmt: skip
    write_calibration(calibration, dest)
    return dest


def test_an_energy_quantile_threshold_comes_from_the_checkpoints_calibration(
    twogoal_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from ebt_policy.deploy.energy import energy_at_quantile
    from ebt_policy.policies import load_policy

    # demonstrations planned at energies -2e6 .. -1e6: any real chunk is far above their p99
    ckpt = _ebt_checkpoint_with_calibration(tmp_path / "ebt", np.linspace(-2e6, -1e6, 101))
    policy = load_policy(ckpt)
    assert energy_at_quantile(policy, 0.5, "--x") == pytest.approx(-1.5e6)
    argv = ["deploy", "--checkpoint", str(ckpt), "--robot", "sim:twogoal", "--rate", "50"]
    argv += ["--duration", "0.4", "--energy-stop-quantile", "0.99", "--log", str(tmp_path / "l")]
    cli_main(argv)
    captured = capsys.readouterr()
    assert "fault: energy" in captured.err + captured.out  # the first chunk stopped it
    assert (tmp_path / "l").read_text() == ""  # before a single action was sent
    # the same policy without the threshold runs its ticks
    assert cli_main(argv[:-4] + ["--log", str(tmp_path / "l")]) == 0
    assert len((tmp_path / "l").read_text().splitlines()) == 20


def test_a_spread_quantile_threshold_needs_a_calibration_with_the_same_k(
    tmp_path: Path, capsys
) -> None:
    # best-of-2 demonstration plans agreed to 1e-9 (an untrained policy's candidates do not) at
    # energies ~1e9 (any chunk's energy is below: only the spread can cross the threshold)
    tiny = np.linspace(0, 1e-9, 101)
    ckpt = _ebt_checkpoint_with_calibration(tmp_path / "ebt", tiny + 1e9, best_of=2, spread=tiny)
    argv = ["deploy", "--checkpoint", str(ckpt), "--robot", "sim:twogoal", "--rate", "50"]
    argv += ["--duration", "0.4", "--energy-score", "spread", "--energy-stop-quantile", "0.99"]
    cli_main([*argv, "--best-of", "2", "--log", str(tmp_path / "l")])
    captured = capsys.readouterr()
    assert "fault: energy" in captured.err + captured.out
    assert (tmp_path / "l").read_text() == ""  # the first chunk stopped it
    for extra, why in [([], "needs --best-of"), (["--best-of", "3"], "best of 2")]:
        assert cli_main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--energy-stop-quantile", "0.99"], "no calibration.json"),
        (["--energy-stop", "1", "--energy-stop-quantile", "0.9"], "not both"),
    ],
)
def test_energy_quantile_flags_are_refused_before_anything_runs(
    twogoal_checkpoint: Path, tmp_path: Path, capsys, extra: list[str], why: str
) -> None:
    store = tmp_path / "rec"
    argv = ["deploy", "--checkpoint", str(twogoal_checkpoint), "--robot", "sim:twogoal"]
    argv += ["--record", str(store), *extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


def test_a_novelty_threshold_stops_on_an_observation_unlike_training(
    tmp_path: Path, capsys
) -> None:
    from ebt_policy.envs import get_task
    from ebt_policy.policies.novelty import LEVELS, NoveltyIndex, write_novelty

    ckpt = _untrained_twogoal("mse", tmp_path / "mse")  # any policy: novelty reads the obs
    argv = ["deploy", "--checkpoint", str(ckpt), "--robot", "sim:twogoal", "--rate", "50"]
    argv += ["--duration", "0.4", "--energy-score", "novelty", "--energy-stop-quantile", "0.99"]
    assert cli_main(argv) == 2  # no index yet: refused in one line
    err = capsys.readouterr().err
    assert "novelty.safetensors" in err and len(err.strip().splitlines()) == 1, err
    # an index whose training windows all lie 1000 ranges away from the scene's observations
    keys = get_task("twogoal").low_dim_keys
    span = {k: np.ones(2, np.float32) for k in keys}
    bank = np.full((8, 2 * 2 * len(keys)), 1000.0, np.float32)
    write_novelty(NoveltyIndex(keys, span, 2, bank, list(np.linspace(0, 1, len(LEVELS)))), ckpt)
    cli_main([*argv, "--log", str(tmp_path / "l")])
    captured = capsys.readouterr()
    assert "fault: energy" in captured.err + captured.out and "novelty" in captured.out
    assert (tmp_path / "l").read_text() == ""  # the first chunk stopped it
    # the threshold off, every tick logs the novelty of the chunk it came from
    assert cli_main(argv[:-4] + ["--log", str(tmp_path / "l")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "l").read_text().splitlines()]
    assert rows and all(r["novelty"] == 1.0 for r in rows if r["chunk"] >= 0)
