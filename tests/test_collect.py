"""`ebt-policy collect`: expert demonstrations into the episode store, ordered and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ebt_policy.cli import main as cli_main
from ebt_policy.datasets import EpisodeStore
from ebt_policy.envs import get_task, make_env
from ebt_policy.envs.collect import CollectConfig, collect, run_expert_episode
from ebt_policy.errors import DatasetError, TaskError


def _episodes(path: Path) -> list[dict[str, np.ndarray]]:
    store = EpisodeStore.open(path)
    return [store.get_episode(i) for i in range(store.n_episodes)]


def _assert_same_episodes(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (ea, eb) in enumerate(zip(a, b, strict=True)):
        assert sorted(ea) == sorted(eb)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=f"episode {i} key {key}")


def _assert_distinct(episodes: list[dict], key: str) -> None:
    firsts = {tuple(np.round(ep[key][0], 7)) for ep in episodes}
    assert len(firsts) == len(episodes), "two stored episodes start from the same state"


def test_collect_cli_then_dataset_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demos.zarr"
    assert cli_main(["collect", "--task", "twogoal", "--episodes", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "episodes in store" in printed and "5 / 5" in printed  # summary table
    assert cli_main(["dataset", "info", str(out)]) == 0
    assert "5 episodes" in capsys.readouterr().out

    store = EpisodeStore.open(out)
    meta = store.metadata
    assert meta["task"]["name"] == "twogoal"
    assert meta["obs_keys"]["low_dim"] == list(get_task("twogoal").low_dim_keys)
    col = meta["collection"]
    assert col["kept_seeds"] == [0, 1, 2, 3, 4] and col["next_seed"] == 5
    assert set(meta["stats"]) >= {"action", "agent_pos", "agent_vel"}  # written at the end
    # every stored episode is the expert's successful episode for its seed
    env = make_env("twogoal")
    for seed, ep in zip(col["kept_seeds"], _episodes(out), strict=True):
        attempt = run_expert_episode(env, get_task("twogoal"), seed)
        assert attempt.success
        for key in ep:
            np.testing.assert_array_equal(ep[key], attempt.data[key])
    env.close()


def test_collect_result_does_not_depend_on_workers(tmp_path: Path) -> None:
    one = collect(CollectConfig("twogoal", 4, tmp_path / "one.zarr", seed=10, workers=1))
    two = collect(CollectConfig("twogoal", 4, tmp_path / "two.zarr", seed=10, workers=2))
    assert one.n_episodes == two.n_episodes == 4
    assert one.attempts == two.attempts and one.n_steps == two.n_steps
    _assert_same_episodes(_episodes(tmp_path / "one.zarr"), _episodes(tmp_path / "two.zarr"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_collect_resumes_to_n_without_duplicates(tmp_path: Path, sig: int) -> None:
    """A real `ebt-policy collect` process is killed midway; rerunning completes the store."""
    out = tmp_path / "demos.zarr"
    n = 40
    cmd = [sys.executable, "-m", "ebt_policy.cli", "collect", "--task", "twogoal"]
    cmd += ["--episodes", str(n), "--out", str(out), "--seed", "3"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    seen = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = EpisodeStore.open(out, check_values=False).n_episodes
            except DatasetError:
                seen = 0  # not created yet
            if seen >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"collect ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(sig)
    finally:
        code = proc.wait(timeout=30)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 143)  # 128 + SIGTERM
    partial = EpisodeStore.open(out, check_values=False).n_episodes
    assert 3 <= partial < n

    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    store = EpisodeStore.open(out)
    assert store.n_episodes == n
    col = store.metadata["collection"]
    assert len(set(col["kept_seeds"])) == n == len(col["kept_seeds"])
    assert col["kept_seeds"] == sorted(col["kept_seeds"]) and col["kept_seeds"][0] == 3
    resumed = _episodes(out)
    _assert_distinct(resumed, "agent_pos")
    # and it is exactly what an uninterrupted collection stores
    collect(CollectConfig("twogoal", n, tmp_path / "straight.zarr", seed=3))
    _assert_same_episodes(resumed, _episodes(tmp_path / "straight.zarr"))


def test_resume_recognises_episode_written_but_not_recorded(tmp_path: Path) -> None:
    """Killed between appending an episode and recording its seed: the episode is kept once."""
    out = tmp_path / "demos.zarr"
    collect(CollectConfig("twogoal", 2, out, seed=0))
    store = EpisodeStore.open(out, "a")
    next_seed = store.metadata["collection"]["next_seed"]
    env = make_env("twogoal")
    store.add_episode(run_expert_episode(env, get_task("twogoal"), next_seed).data)
    env.close()
    store.close()

    summary = collect(CollectConfig("twogoal", 4, out, seed=0))
    assert summary.resumed and summary.new_episodes == 1
    store = EpisodeStore.open(out)
    assert store.n_episodes == 4
    assert store.metadata["collection"]["kept_seeds"] == [0, 1, 2, 3]
    collect(CollectConfig("twogoal", 4, tmp_path / "straight.zarr", seed=0))
    _assert_same_episodes(_episodes(out), _episodes(tmp_path / "straight.zarr"))


def test_complete_store_is_left_alone_and_mismatched_resume_fails(tmp_path: Path) -> None:
    out = tmp_path / "demos.zarr"
    collect(CollectConfig("twogoal", 2, out, seed=0))
    again = collect(CollectConfig("twogoal", 2, out, seed=0))
    assert again.resumed and again.attempts == 0 and again.n_episodes == 2
    with pytest.raises(DatasetError, match="collection.task"):
        collect(CollectConfig("lift", 3, out, seed=0))
    with pytest.raises(DatasetError, match="collection.seed"):
        collect(CollectConfig("twogoal", 3, out, seed=7))
    with pytest.raises(TaskError, match="unknown task"):
        collect(CollectConfig("nope", 3, tmp_path / "x.zarr"))
    assert not (tmp_path / "x.zarr").exists()
    EpisodeStore.create(tmp_path / "foreign.zarr", {})
    with pytest.raises(DatasetError, match="no 'collection' metadata"):
        collect(CollectConfig("twogoal", 1, tmp_path / "foreign.zarr"))


def test_keep_failures_records_which_episodes_failed(tmp_path: Path) -> None:
    # a 10-step episode cap is too short for the twogoal expert: every attempt fails
    summary = collect(
        CollectConfig("twogoal", 2, tmp_path / "d.zarr", keep_failures=True, max_episode_steps=10)
    )
    assert summary.successes == 0 and summary.n_episodes == 2
    col = EpisodeStore.open(tmp_path / "d.zarr").metadata["collection"]
    assert col["episode_success"] == [False, False]
    dropped = collect(
        CollectConfig("twogoal", 1, tmp_path / "e.zarr", max_episode_steps=10, max_attempts=3)
    )
    assert dropped.attempts == 3 and dropped.n_episodes == 0
    col = EpisodeStore.open(tmp_path / "e.zarr").metadata["collection"]
    assert col["failed_seeds"] == [0, 1, 2]


def test_image_collection_lift(tmp_path: Path) -> None:
    """Two robosuite Lift episodes with both cameras, rendered headless (MUJOCO_GL=egl)."""
    out = tmp_path / "img.zarr"
    summary = collect(CollectConfig("lift", 2, out, seed=0, images=True))
    assert summary.n_episodes == 2
    store = EpisodeStore.open(out)
    spec = get_task("lift")
    assert store.metadata["obs_keys"]["rgb"] == list(spec.rgb_keys)
    for key in spec.rgb_keys:
        assert store.key_dtype(key) == np.uint8
        assert store.key_shape(key) == (84, 84, 3)
        frames = store.read(key, 0, 5)
        assert frames.std() > 5  # a rendered scene, not a blank image
    assert "stats" in store.metadata


@pytest.mark.slow
def test_collect_lift_20_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demos.zarr"
    args = ["collect", "--task", "lift", "--episodes", "20", "--out", str(out), "--workers", "2"]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(["dataset", "info", str(out)]) == 0
    assert "20 episodes" in capsys.readouterr().out
    _assert_distinct(_episodes(out), "cube_pos")
