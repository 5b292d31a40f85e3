"""`ebt-policy record`: a replayed scripted episode records exactly what `collect` stored, the
trainer accepts the recording, reruns resume, and keyboard teleop works from key events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ebt_policy.cli import main as cli_main


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """Two scripted-expert Lift episodes from seed 7, as `ebt-policy collect` stores them."""
    out = tmp_path_factory.mktemp("collect") / "expert.zarr"
    argv = ["collect", "--task", "lift", "--episodes", "2", "--out", str(out), "--seed", "7"]
    assert cli_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def recorded(collected: Path, tmp_path_factory) -> Path:
    """The same episodes, recorded by replaying the expert's actions on sim:lift."""
    out = tmp_path_factory.mktemp("record") / "demos.zarr"
    argv = ["record", "--robot", "sim:lift", "--teleop", "replay"]
    argv += ["--replay-from", str(collected), "--out", str(out)]
    assert cli_main(argv) == 0
    return out


def test_replaying_the_expert_through_record_reproduces_the_collected_store(
    collected: Path, recorded: Path
) -> None:
    from ebt_policy.datasets import EpisodeStore

    with EpisodeStore.open(collected) as want, EpisodeStore.open(recorded) as got:
        assert got.keys == want.keys
        assert np.array_equal(got.episode_ends, want.episode_ends)
        for key in want.keys:
            np.testing.assert_allclose(got.read(key), want.read(key), rtol=0, atol=1e-6)
        for key in ("task", "control_hz", "horizon", "action_space", "obs_keys"):
            assert got.metadata[key] == want.metadata[key], key
        for key in ("action", "robot0_eef_pos"):  # stats for the trainer, as collect writes
            np.testing.assert_allclose(
                got.metadata["stats"][key]["mean"], want.metadata["stats"][key]["mean"], atol=1e-6
            )
        rec = got.metadata["recording"]
        assert rec["episode_seeds"] == want.metadata["collection"]["kept_seeds"] == [7, 8]
        assert rec["episode_success"] == [True, True]


def test_the_trainer_accepts_a_recorded_store(recorded: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(recorded), "--out", str(run), "--preset", "tiny"]
    assert cli_main([*argv, "--steps", "3", "--batch-size", "4"]) == 0
    assert (run / "checkpoints" / "last" / "model.safetensors").exists()


def test_a_rerun_records_only_the_missing_episodes(collected: Path, tmp_path: Path) -> None:
    from ebt_policy.datasets import EpisodeStore

    out = tmp_path / "partial.zarr"
    base = ["record", "--robot", "sim:lift", "--teleop", "replay"]
    base += ["--replay-from", str(collected), "--out", str(out)]
    assert cli_main([*base, "--episodes", "1"]) == 0
    with EpisodeStore.open(out) as s:
        assert s.n_episodes == 1
        first = s.read("action")
    assert cli_main(base) == 0  # default: as many as the source has
    with EpisodeStore.open(out) as s, EpisodeStore.open(collected) as want:
        assert s.n_episodes == 2
        np.testing.assert_array_equal(s.read("action")[: len(first)], first)
        np.testing.assert_array_equal(s.read("action"), want.read("action"))
        assert s.metadata["recording"]["episode_seeds"] == [7, 8]


def test_a_run_killed_between_append_and_bookkeeping_is_adopted_on_resume(
    collected: Path, tmp_path: Path
) -> None:
    """The kill window of a commit: the episode was appended, its listing was not."""
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.record.session import open_recording

    out = tmp_path / "killed.zarr"
    base = ["record", "--robot", "sim:lift", "--teleop", "replay"]
    base += ["--replay-from", str(collected), "--out", str(out)]
    assert cli_main([*base, "--episodes", "1"]) == 0
    with EpisodeStore.open(out, "a") as s, EpisodeStore.open(collected) as src:
        rec = dict(s.metadata["recording"])
        pending = {"index": 1, "episode_success": True, "episode_seeds": 8, "teleop": "replay"}
        s.update_metadata(recording={**rec, "pending": pending})
        s.add_episode(src.get_episode(1, s.keys))
    meta = EpisodeStore.open(out).metadata
    store, rec = open_recording(str(out), {k: meta[k] for k in meta if k != "recording"}, 0)
    store.close()
    assert rec["episode_seeds"] == [7, 8] and "pending" not in rec


def test_record_refuses_a_store_of_another_task_and_one_not_written_by_record(
    collected: Path, tmp_path: Path, capsys
) -> None:
    argv = ["record", "--robot", "sim:twogoal", "--teleop", "keyboard", "--out", str(collected)]
    assert cli_main(argv) == 2
    assert "no 'recording' metadata" in capsys.readouterr().err
    argv = ["record", "--robot", "sim:lift", "--teleop", "replay", "--out", str(tmp_path / "x")]
    assert cli_main(argv) == 2
    assert "--replay-from" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_keyboard_teleop_turns_key_events_into_delta_actions() -> None:
    from ebt_policy.record.teleop import KeyboardTeleop

    clock = FakeClock()
    kb = KeyboardTeleop(7, speed=0.5, hold_s=0.3, clock=clock)
    kb.start_episode(0)
    np.testing.assert_array_equal(kb.command({}).action, [0, 0, 0, 0, 0, 0, -1])  # still, open
    kb.press("w")
    kb.press("q")
    kb.press(" ")
    cmd = kb.command({})
    np.testing.assert_array_equal(cmd.action, [0.5, 0, -0.5, 0, 0, 0, 1])
    assert cmd.end is None
    clock.t = 0.2
    kb.press("w")  # a held key repeats: x keeps moving, z (released) stops after hold_s
    clock.t = 0.35
    np.testing.assert_array_equal(kb.command({}).action, [0.5, 0, 0, 0, 0, 0, 1])
    clock.t = 1.0
    np.testing.assert_array_equal(kb.command({}).action, [0, 0, 0, 0, 0, 0, 1])
    kb.press("\n")
    assert kb.command({}).end == "success"
    assert kb.command({}).end is None  # taken once
    kb.press("\x7f")
    assert kb.command({}).end == "discard"
    two = KeyboardTeleop(2, clock=clock)  # twogoal: x/y only
    two.press("d")
    np.testing.assert_array_equal(two.command({}).action, [0, -0.5])


def test_keyboard_keys_from_a_stream_reach_the_teleop() -> None:
    import os
    import time

    from ebt_policy.record.teleop import KeyboardTeleop, StdinKeys

    kb = KeyboardTeleop(7, hold_s=5.0)
    read, write = os.pipe()
    with os.fdopen(read) as stream, StdinKeys(kb, stream).running():
        os.write(write, b"a\n")
        deadline = time.monotonic() + 5
        while kb._end is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cmd = kb.command({})
    os.close(write)
    assert cmd.action[1] == 0.5 and cmd.end == "success"


def test_keyboard_recording_on_sim_twogoal_keeps_and_discards_as_the_operator_says(
    tmp_path: Path,
) -> None:
    """Episode 0 discarded with Backspace, then kept with Enter; success is the task's check."""
    import threading

    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.record import KeyboardTeleop, record
    from ebt_policy.record.lockstep import LockstepSim

    robot = LockstepSim("twogoal")
    kb = KeyboardTeleop(2, speed=1.0, hold_s=10.0)
    script = [(0.2, "d"), (0.4, "\x7f"), (0.8, "w"), (1.2, "\n")]

    def operator() -> None:
        import time

        t0 = time.monotonic()
        for at, key in script:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            kb.press(key)

    thread = threading.Thread(target=operator)
    thread.start()
    summary = record(robot, kb, str(tmp_path / "kb.zarr"), 1, seed=3, rate_hz=50, paced=True)
    thread.join()
    assert summary.discarded == 1 and summary.new_episodes == 1
    with EpisodeStore.open(tmp_path / "kb.zarr") as s:
        actions = s.read("action")
        assert s.metadata["recording"]["episode_success"] in ([False], [True])
        assert s.metadata["task"]["name"] == "twogoal"
    # the kept episode ran from the discard (0.4 s) to Enter (1.2 s): ~40 ticks at 50 Hz, still
    # until "w" (+x) at 0.8 s; the discarded episode's "d" (-y) left nothing behind
    assert 25 <= len(actions) <= 55
    assert np.all(actions[:, 1] == 0.0)
    assert actions[0, 0] == 0.0 and actions[-1, 0] == 1.0
