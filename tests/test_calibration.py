"""Uncertainty calibration: measured on held-out demos, stored beside the checkpoint, reloaded by
load_policy into the same per-chunk scores; the quantile map is monotone; bad input is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt_policy import load_policy
from ebt_policy.cli import main as cli_main
from ebt_policy.errors import CheckpointError, ConfigError, DatasetError
from ebt_policy.policies.calibrate_cli import calibrate
from ebt_policy.policies.calibration import CALIBRATION_NAME, LEVELS, Calibration
from ebt_policy.policies.checkpoint import load_policy as checkpoint_load_policy
from ebt_policy.training import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 12-step toy EBT run (6 episodes, one held out) and its store."""
    from ebt_policy.datasets import EpisodeStore

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(1)
    store = EpisodeStore.create(root / "toy.zarr", {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(6):
        state = rng.uniform(-1, 1, size=(25, 4)).astype(np.float32)
        store.add_episode({"action": np.tanh(state[:, :2] - state[:, 2:]), "state": state})
    cfg = TrainConfig(
        dataset=str(root / "toy.zarr"),
        out=str(root / "run"),
        preset="mlp",
        policy_overrides={"mlp_hidden": 32, "mlp_layers": 2},
        steps=12,
        batch_size=8,
        device="cpu",
        save_every=12,
        progress=False,
    )
    return train(cfg), root / "toy.zarr"


@pytest.fixture
def checkpoint(run: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the run's last checkpoint (tests write calibration.json into it)."""
    return Path(shutil.copytree(run[0] / "checkpoints" / "last", tmp_path / "ckpt"))


def _obs(batch: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"state": rng.uniform(-1, 1, (batch, 2, 4)).astype(np.float32)}


def _predict(policy: torch.nn.Module):
    return policy.predict_chunk(_obs(), generator=torch.Generator().manual_seed(3))


def test_calibration_is_stored_and_reloaded_with_the_same_scores(
    run: tuple[Path, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ebt_policy.datasets import split_episodes

    assert _predict(load_policy(checkpoint)).uncertainty is None  # no calibration yet
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--dataset", str(run[1])]
    assert cli_main([*argv, "--windows", "40", "--seeds", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads((checkpoint / CALIBRATION_NAME).read_text())
    assert data["score"] == "energy" and len(data["quantiles"]["grad_norm"]) == len(LEVELS)
    # the episodes training held out, by its own seeded split
    assert data["info"]["episodes"] == split_episodes(6, val_fraction=0.1, seed=0)[1]
    assert data["info"]["chunks"] == 2 * data["info"]["windows"]

    first, second = _predict(load_policy(checkpoint)), _predict(load_policy(checkpoint))
    assert first.uncertainty is not None and first.uncertainty.shape == (5,)
    assert ((first.uncertainty >= 0) & (first.uncertainty <= 1)).all()
    np.testing.assert_array_equal(first.uncertainty, second.uncertainty)
    policy = load_policy(checkpoint)
    expected = policy.calibration.uncertainty(first.energy, first.grad_norm)
    np.testing.assert_array_equal(first.uncertainty, expected)
    # every chunk an evaluation or the deploy loop plans records its score (the eval JSON's)
    from ebt_policy.rollout import RolloutExecutor

    plans = []
    executor = RolloutExecutor(policy, n_rows=2, on_plan=plans.append)
    for row in (0, 1):
        executor.start_episode(row, {"state": _obs(2)["state"][row, 0]}, seed=row)
    executor.act()
    score = plans[0].prediction.uncertainty
    assert [r.uncertainty for r in plans[0].records] == [float(score[0]), float(score[1])]
    # measuring again gives the same quantiles (seeded noise, the same windows)
    again = calibrate(checkpoint, run[1], windows=40, seeds=2, write=False)
    assert again.quantiles == policy.calibration.quantiles
    # another stopping rule than the calibrated one: no score rather than a wrong one
    override = policy.predict_chunk(_obs(), descent_steps=5)
    assert override.uncertainty is None
    policy.descent.config.descent_min_disp = 0.01  # the displacement stop changes it too
    assert policy.predict_chunk(_obs()).uncertainty is None


def test_quantile_map_is_monotone_and_bounded() -> None:
    rng = np.random.default_rng(0)
    demo = rng.normal(size=2000)  # e.g. energies of in-distribution chunks
    cal = Calibration.from_values(
        demo, np.abs(demo), score="energy", descent_steps=2, descent_min_grad=1e-3
    )
    grid = np.linspace(-6, 6, 500)
    q = cal.quantile_of("energy", grid)
    assert (np.diff(q) >= 0).all() and q[0] == 0.0 and q[-1] == 1.0
    assert abs(float(cal.quantile_of("energy", np.array([np.median(demo)]))[0]) - 0.5) < 0.01
    # a chunk unlike the demonstrations (higher energy) scores higher than a typical one
    in_dist, perturbed = cal.uncertainty(np.array([0.0, 4.0]), np.array([0.0, 4.0]))
    assert in_dist < 0.6 < 0.99 < perturbed
    by_grad = Calibration(**{**cal.__dict__, "score": "grad_norm"})
    assert by_grad.uncertainty(np.array([9.0]), np.array([0.0]))[0] == 0.0


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_calibration_files_give_one_line_checkpoint_errors(
    run: tuple[Path, Path], checkpoint: Path
) -> None:
    calibrate(checkpoint, run[1], windows=20)
    path = checkpoint / CALIBRATION_NAME
    good = json.loads(path.read_text())
    cases = {
        "not valid JSON": path.read_text()[:50],
        "key 'version'": json.dumps({**good, "version": 99}),
        "quantiles['energy']": json.dumps({**good, "quantiles": {"grad_norm": [0.0] * 101}}),
        "non-decreasing": json.dumps(
            {**good, "quantiles": {**good["quantiles"], "energy": [1.0] + [0.0] * 100}}
        ),
        "missing key(s) ['score']": json.dumps({k: v for k, v in good.items() if k != "score"}),
        "other weights": json.dumps({**good, "weights_sha256": "0" * 64}),
    }
    for fragment, text in cases.items():
        path.write_text(text)
        with pytest.raises(CheckpointError) as exc:
            load_policy(checkpoint)
        _one_line(exc, CALIBRATION_NAME, fragment)
    assert checkpoint_load_policy(checkpoint, calibration=False).calibration is None
    calibrate(checkpoint, run[1], windows=20)  # replaces the bad (here: stale) file
    assert load_policy(checkpoint).calibration is not None


def test_bad_calibrate_input_gives_one_line_errors(
    run: tuple[Path, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        calibrate(checkpoint, run[1], score="entropy", write=False)
    _one_line(exc, "--score", "entropy")
    with pytest.raises(DatasetError) as exc:
        calibrate(checkpoint, run[1], episodes=[2, 9], write=False)
    _one_line(exc, "--episodes [9]", "0..5")
    with pytest.raises(ConfigError) as exc:
        calibrate(checkpoint, run[1], windows=0, write=False)
    _one_line(exc, "--windows")
    config = json.loads((checkpoint / "config.json").read_text())
    config["train_config"]["val_fraction"] = 0.0
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(DatasetError) as exc:
        calibrate(checkpoint, run[1], write=False)
    _one_line(exc, "held out no episode", "--episodes")
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--dataset", str(run[1])]
    assert cli_main([*argv, "--episodes", "1,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --episodes") and "\n" not in err
    assert cli_main([*argv, "--episodes", "1,2"]) == 0  # named episodes need no split
    assert not list(checkpoint.glob("*.tmp*"))  # written atomically


def test_running_a_calibrated_policy_imports_no_store(
    run: tuple[Path, Path], checkpoint: Path
) -> None:
    calibrate(checkpoint, run[1], windows=20)
    code = (
        "import numpy as np, sys; from ebt_policy import load_policy; "
        f"p = load_policy({str(checkpoint)!r}); "
        "u = p.predict_chunk({'state': np.zeros((2, 2, 4), np.float32)}).uncertainty; "
        "assert u is not None; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'zarr' "
        "or m.startswith(('ebt_policy.datasets', 'ebt_policy.training', 'ebt_policy.envs'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_best_of_k_calibration_scores_spread_only_for_the_same_k(
    run: tuple[Path, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--dataset", str(run[1])]
    assert cli_main([*argv, "--windows", "30", "--best-of", "3", "--score", "spread"]) == 0
    assert "best of 3" in capsys.readouterr().out
    data = json.loads((checkpoint / CALIBRATION_NAME).read_text())
    assert data["version"] == 2 and data["best_of"] == 3 and data["score"] == "spread"
    assert len(data["quantiles"]["spread"]) == len(LEVELS)

    policy = load_policy(checkpoint)
    assert _predict(policy).uncertainty is None  # plans from one candidate: not what was measured
    policy.set_engine(best_of=3)
    pred = _predict(policy)
    assert pred.spread is not None and pred.uncertainty is not None
    expected = policy.calibration.quantile_of("spread", pred.spread)
    np.testing.assert_array_equal(pred.uncertainty, expected)
    policy.set_engine(best_of=2)
    assert _predict(policy).uncertainty is None  # another K: no score rather than a wrong one

    # a version-1 file (no best_of, no spread) still reads, as one candidate
    old = {**data, "version": 1, "score": "energy"}
    del old["best_of"]
    old["quantiles"] = {k: v for k, v in data["quantiles"].items() if k != "spread"}
    (checkpoint / CALIBRATION_NAME).write_text(json.dumps(old))
    assert load_policy(checkpoint).calibration.best_of == 1
    assert _predict(load_policy(checkpoint)).uncertainty is not None

    with pytest.raises(ConfigError) as exc:
        calibrate(checkpoint, run[1], score="spread", write=False)
    _one_line(exc, "--score spread", "--best-of")
    with pytest.raises(ConfigError) as exc:
        calibrate(checkpoint, run[1], best_of=0, write=False)
    _one_line(exc, "--best-of")
