"""Observation novelty: built from a store's training windows, calibrated on held-out ones,
stored beside the checkpoint and reloaded into the same per-chunk scores; an observation far from
every training window scores 1, a held-out one about 0.5; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt_policy import load_policy
from ebt_policy.cli import main as cli_main
from ebt_policy.errors import CheckpointError, ConfigError
from ebt_policy.policies.calibrate_cli import calibrate_novelty
from ebt_policy.policies.novelty import (
    LEVELS,
    NOVELTY_NAME,
    NoveltyIndex,
    read_novelty,
    write_novelty,
)

EPISODES, STEPS = 8, 30


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy demonstrations: a 4-d state drifting inside [-1, 1]^4, 8 episodes."""
    from ebt_policy.datasets import EpisodeStore

    path = tmp_path_factory.mktemp("novelty") / "toy.zarr"
    rng = np.random.default_rng(0)
    s = EpisodeStore.create(path, {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(EPISODES):
        walk = np.cumsum(rng.normal(0, 0.05, (STEPS, 4)), 0) + rng.uniform(-0.5, 0.5, 4)
        state = np.clip(walk, -1, 1).astype(np.float32)
        s.add_episode({"state": state, "action": np.tanh(state[:, :2]).astype(np.float32)})
    return path


def _untrained(policy_type: str, path: Path) -> Path:
    from ebt_policy.policies import make_policy, make_policy_config, save_pretrained

    shape_meta = {"obs": {"state": {"shape": [4], "type": "low_dim"}}, "action": {"shape": [2]}}
    stats = {
        k: {s: [-1.0] * n for s in ("min", "q01")}
        | {s: [1.0] * n for s in ("max", "std", "q99")}
        | {"mean": [0.0] * n}
        for k, n in (("state", 4), ("action", 2))
    }
    policy = make_policy(make_policy_config(policy_type, "tiny"), shape_meta, stats)
    save_pretrained(policy, path, shape_meta=shape_meta)
    return path


def _windows(store: Path, episodes: list[int]) -> dict[str, np.ndarray]:
    """Every 2-frame state window of ``episodes`` (B, 2, 4), env units."""
    from ebt_policy.datasets import EpisodeStore

    s = EpisodeStore.open(store, "r")
    out = []
    for e in episodes:
        state = np.asarray(s.get_episode(e)["state"])
        out += [state[t : t + 2] for t in range(len(state) - 1)]
    return {"state": np.stack(out)}


def test_novelty_is_stored_and_reloaded_and_flags_unseen_observations(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _untrained("mse", tmp_path / "mse")  # no energy: novelty works for any policy
    assert load_policy(ckpt).novelty is None
    argv = ["calibrate", "--checkpoint", str(ckpt), "--dataset", str(store), "--novelty"]
    assert cli_main([*argv, "--episodes", "6,7"]) == 0
    out = capsys.readouterr().out
    assert "novelty index: " in out and "wrote" in out
    assert not (ckpt / "calibration.json").exists()  # an MSE policy has no energy to calibrate
    policy = load_policy(ckpt)
    index = policy.novelty
    assert index.keys == ("state",) and index.info["episodes"] == [6, 7]
    assert index.info["bank_episodes"] == EPISODES - 2
    # the same index as building it again in memory, and the same scores
    again = calibrate_novelty(ckpt, store, episodes=[6, 7], write=False)
    np.testing.assert_array_equal(again.bank, index.bank)
    assert again.quantiles == index.quantiles
    held = _windows(store, [6, 7])
    np.testing.assert_array_equal(again.score(held), index.score(held))
    # held-out windows: as novel as the calibration says (their median near 0.5); windows of
    # training episodes sit at distance 0, below every held-out one; windows moved out of the
    # demonstrated range score 1
    assert 0.3 < float(np.median(index.score(held))) < 0.7
    assert np.all(index.score(_windows(store, [0, 1])) <= index.score(held).min())
    shifted = {"state": held["state"] + np.array([2.0, 0, 0, 0], np.float32)}
    assert np.all(index.score(shifted) == 1.0)
    # predict_chunk reports it per row
    mixed = {"state": np.concatenate([held["state"][:2], shifted["state"][:1]])}
    pred = policy.predict_chunk(mixed)
    np.testing.assert_array_equal(pred.novelty, index.score(mixed))
    assert pred.novelty[2] == 1.0
    # load_policy(novelty=False) ignores it
    from ebt_policy.policies.checkpoint import load_policy as load_policy_from

    assert load_policy_from(ckpt, novelty=False).predict_chunk(mixed).novelty is None


def test_an_ebt_checkpoint_gets_energy_calibration_and_novelty_in_one_command(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _untrained("ebt", tmp_path / "ebt")
    argv = ["calibrate", "--checkpoint", str(ckpt), "--dataset", str(store), "--novelty"]
    assert cli_main([*argv, "--episodes", "7", "--windows", "10"]) == 0
    assert (ckpt / "calibration.json").exists() and (ckpt / NOVELTY_NAME).exists()
    pred = load_policy(ckpt).predict_chunk(_windows(store, [7]))
    assert pred.uncertainty is not None and pred.novelty is not None


def test_bad_novelty_input_gives_one_line_errors_and_writes_nothing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _untrained("mse", tmp_path / "mse")
    base = ["calibrate", "--checkpoint", str(ckpt), "--dataset", str(store)]
    for extra, why in [
        ([], "no energy to calibrate"),
        (["--novelty", "--novelty-windows", "0"], "--novelty-windows"),
        (["--novelty"], "held out no episode"),  # an untrained checkpoint: no split to reuse
        (["--novelty", "--episodes", "0,1,2,3,4,5,6,7"], "no episode is left"),
        (["--novelty", "--episodes", "9"], "--episodes [9]"),
    ]:
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]


def _index(keys=("state",), n_obs_steps=2) -> NoveltyIndex:
    span = {k: np.ones(4, np.float32) for k in keys}
    bank = np.zeros((3, 4 * n_obs_steps * len(keys)), np.float32)
    return NoveltyIndex(keys, span, n_obs_steps, bank, list(np.linspace(0, 1, len(LEVELS))))


def test_bad_novelty_files_give_one_line_checkpoint_errors(tmp_path: Path) -> None:
    ckpt = _untrained("mse", tmp_path / "mse")
    path = ckpt / NOVELTY_NAME
    cases = [
        (lambda: path.write_bytes(b"\x00" * 12), "unreadable"),
        (lambda: write_novelty(_index(keys=("other",)), ckpt), "built for observation keys"),
        (lambda: write_novelty(_index(n_obs_steps=3), ckpt), "3-frame windows"),
    ]
    for make, why in cases:
        make()
        with pytest.raises(CheckpointError, match=why) as exc:
            load_policy(ckpt)
        assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)
    # a newer format version, and quantiles that are not a quantile function
    from safetensors.torch import save_file

    bank = {"bank": torch.zeros(3, 8), "span.0": torch.ones(4)}
    meta = {"keys": '["state"]', "n_obs_steps": "2", "quantiles": json.dumps([0.0] * 101)}
    for version, quantiles, why in [("9", None, "'version'"), ("1", [1.0, 0.0], "quantiles")]:
        m = meta | {"version": version}
        if quantiles is not None:
            m["quantiles"] = json.dumps(quantiles)
        save_file(bank, str(path), metadata=m)
        with pytest.raises(CheckpointError, match=why):
            read_novelty(ckpt)
    with pytest.raises(ConfigError, match="expected 8"):
        NoveltyIndex(("state",), {"state": np.ones(4)}, 2, np.zeros((3, 5)), [0.0] * 101)


def test_running_a_policy_with_novelty_imports_no_store(store: Path, tmp_path: Path) -> None:
    ckpt = _untrained("mse", tmp_path / "mse")
    calibrate_novelty(ckpt, store, episodes=[7])
    code = (
        "import numpy as np, sys; from ebt_policy import load_policy; "
        f"p = load_policy({str(ckpt)!r}); "
        "n = p.predict_chunk({'state': np.zeros((2, 2, 4), np.float32)}).novelty; "
        "assert n is not None and n.shape == (2,); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'zarr' "
        "or m.startswith(('ebt_policy.datasets', 'ebt_policy.training', 'ebt_policy.envs'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_frame_changes_make_frozen_frames_novel_where_the_demos_always_move(
    tmp_path: Path,
) -> None:
    """A window whose two frames are equal looks like training by position alone; with the
    frame changes in the features (``--novelty-deltas``) it is farther than every held-out
    window when every demonstration moves at each step."""
    from ebt_policy.datasets import EpisodeStore

    path = tmp_path / "moving.zarr"
    rng = np.random.default_rng(1)
    s = EpisodeStore.create(path, {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(EPISODES):
        t = np.arange(STEPS, dtype=np.float32)[:, None]
        state = rng.uniform(-0.1, 0.1, 4) + 0.03 * t * np.array([1, -1, 0.5, 0], np.float32)
        s.add_episode({"state": state.astype(np.float32), "action": state[:, :2].copy()})
    ckpt = _untrained("mse", tmp_path / "mse")
    plain = calibrate_novelty(ckpt, path, episodes=[6, 7], write=False)
    moving = calibrate_novelty(ckpt, path, episodes=[6, 7], deltas=True)  # written
    held = _windows(path, [6, 7])
    # frozen past the first steps (an episode's start is padded with its first frame: at rest)
    late = np.concatenate([np.arange(8, STEPS - 1), STEPS - 1 + np.arange(8, STEPS - 1)])
    frozen = {"state": np.repeat(held["state"][late, :1], 2, axis=1)}
    assert float(np.median(plain.score(frozen))) < 1.0  # positions alone: looks like training
    assert np.all(moving.score(frozen) == 1.0)
    assert 0.3 < float(np.median(moving.score(held))) < 0.7
    reloaded = load_policy(ckpt).novelty  # the frame-change ranges are stored too
    np.testing.assert_array_equal(reloaded.score(frozen), moving.score(frozen))
    np.testing.assert_array_equal(reloaded.score(held), moving.score(held))
