"""Evaluation runner: seeded episodes over vector envs, obs stacking, chunk execution, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ebt_policy.datasets import EpisodeStore
from ebt_policy.envs import make_env
from ebt_policy.envs.collect import CollectConfig, collect
from ebt_policy.envs.expert_policy import ExpertPolicy
from ebt_policy.envs.runner import EvalConfig, EvalResult, evaluate
from ebt_policy.envs.tasks.twogoal.env import GOALS
from ebt_policy.envs.video import annotate
from ebt_policy.errors import ConfigError
from ebt_policy.policies.base import ChunkPrediction, Policy


class ChunkPolicy(Policy):
    """Deterministic twogoal controller with To=2, Ta=3 that records what it was given.

    It reports a fake per-row energy (distance to its target) and steps, like a real policy.
    It keeps no state across calls, so its results must not depend on how rows are batched.
    """

    name = "chunk-test"
    n_obs_steps = 2
    n_action_steps = 3
    horizon = 4

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def start_episode(self, row: int, seed: int | None) -> None:
        self.resets += 1  # per-episode state would be cleared here (this policy keeps none)

    def predict_chunk(
        self, obs_window: dict[str, np.ndarray], rows: list[int] | None = None
    ) -> ChunkPrediction:
        pos = obs_window["agent_pos"][:, -1].astype(np.float64)  # (B, 2)
        around = (pos[:, 1] < 0.0) & (pos[:, 0] < 0.17)
        target = np.where(around[:, None], [[0.2, -0.05]], GOALS[1][None])
        err = target - pos
        actions = np.clip(8.0 * err, -1, 1).astype(np.float32)  # (B, 2)
        chunk = np.repeat(actions[:, None], self.horizon, axis=1)  # (B, Tp, 2)
        acts = chunk[:, self.n_obs_steps - 1 : self.n_obs_steps - 1 + self.n_action_steps]
        self.calls.append(({k: v.copy() for k, v in obs_window.items()}, acts.copy()))
        return ChunkPrediction(
            actions=acts,
            chunk=chunk,
            energy=np.linalg.norm(err, axis=1),
            steps=np.full(len(pos), 2),
            grad_norm=np.full(len(pos), 1e-3),
            latency_s=1e-4,
        )


def _outcomes(result: EvalResult) -> list[tuple]:
    return [
        (e.episode, e.seed, e.success, e.length, e.total_reward, [c.t for c in e.chunks])
        for e in result.episodes
    ]


def test_chunks_and_stacked_observations_replay_exactly() -> None:
    """Each chunk sees [obs t-1, obs t] (first frame repeated at t=0) and its Ta actions run."""
    policy = ChunkPolicy()
    assert isinstance(policy, Policy)
    result = evaluate(policy, EvalConfig(task="twogoal", episodes=3, seed=5, workers=1))
    assert [e.seed for e in result.episodes] == [5, 6, 7]
    assert result.success_rate == 1.0
    assert policy.resets >= 3  # no state may leak from one episode into the next
    calls = iter(policy.calls)
    env = make_env("twogoal")
    ta = policy.n_action_steps
    for record in result.episodes:
        obs, _ = env.reset(seed=record.seed)
        history = [obs, obs]
        t, done = 0, False
        while not done:
            window, actions = next(calls)
            assert t % ta == 0 and window["agent_pos"].shape == (1, 2, 2)
            for key in obs:
                np.testing.assert_array_equal(window[key][0], np.stack([h[key] for h in history]))
            for action in actions[0]:
                obs, _, terminated, truncated, info = env.step(action)
                history = [history[-1], obs]
                t += 1
                if terminated or truncated:
                    done = True
                    break
        assert t == record.length and info["success"] == record.success
        assert [c.t for c in record.chunks] == list(range(0, record.length, ta))
        assert all(c.energy is not None and c.steps == 2 for c in record.chunks)
    assert next(calls, None) is None
    env.close()


def test_two_async_workers_give_the_same_per_seed_results() -> None:
    for make_policy in (ChunkPolicy, lambda: ExpertPolicy("twogoal")):
        one = evaluate(make_policy(), EvalConfig(task="twogoal", episodes=5, seed=0, workers=1))
        two = evaluate(make_policy(), EvalConfig(task="twogoal", episodes=5, seed=0, workers=2))
        assert two.workers == 2
        assert _outcomes(one) == _outcomes(two)
        energies = [[c.energy for c in e.chunks] for e in one.episodes]
        assert energies == [[c.energy for c in e.chunks] for e in two.episodes]


def test_expert_scores_the_same_through_the_runner_as_when_collecting(tmp_path: Path) -> None:
    out = tmp_path / "lift.zarr"
    summary = collect(CollectConfig("lift", 3, out, seed=0, keep_failures=True))
    store = EpisodeStore.open(out)
    col = store.metadata["collection"]
    assert col["kept_seeds"] == [0, 1, 2] and summary.attempts == 3
    result = evaluate(ExpertPolicy("lift"), EvalConfig(metadata=store.metadata, episodes=3, seed=0))
    assert [e.seed for e in result.episodes] == col["kept_seeds"]
    assert [e.success for e in result.episodes] == col["episode_success"]
    assert [e.length for e in result.episodes] == store.episode_lengths().tolist()


def test_max_episode_steps_json_and_video(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    policy = ChunkPolicy()
    config = EvalConfig(
        task="twogoal",
        episodes=2,
        seed=0,
        max_episode_steps=10,
        video_dir=tmp_path / "videos",
        n_videos=1,
        json_path=tmp_path / "eval.json",
    )
    result = evaluate(policy, config)
    assert [e.length for e in result.episodes] == [10, 10]
    assert all(e.truncated and not e.terminated and not e.success for e in result.episodes)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["success_rate"] == 0.0 and data["n_episodes"] == 2
    assert [e["seed"] for e in data["episodes"]] == [0, 1]
    chunks = data["episodes"][0]["chunks"]
    assert len(chunks) == 4 and all(c["steps"] == 2 for c in chunks)  # ceil(10 / 3)
    energies = [c["energy"] for e in data["episodes"] for c in e["chunks"]]
    assert data["energy_min"] == pytest.approx(min(energies))
    assert data["energy_max"] == pytest.approx(max(energies))
    assert data["latency_p50_ms"] == pytest.approx(0.1)
    assert json.loads(result.to_json()) == data

    videos = sorted((tmp_path / "videos").iterdir())
    assert [v.name for v in videos] == ["episode_000_seed0.mp4"]
    assert result.episodes[0].video == str(videos[0]) and result.episodes[1].video is None
    reader = imageio.get_reader(videos[0])
    frames = [frame for frame in reader.iter_data()]  # list() would ask len(): inf for ffmpeg
    reader.close()
    assert len(frames) == 11  # the reset frame and one per step
    assert frames[0].shape == (256, 256, 3)
    plain = np.zeros((64, 64, 3), np.uint8)
    assert annotate(plain, ["E=+0.1234"]).any()  # text is drawn


def test_bad_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="exactly one of task"):
        evaluate(ChunkPolicy(), EvalConfig(episodes=1))
    with pytest.raises(ConfigError, match="episodes"):
        evaluate(ChunkPolicy(), EvalConfig(task="twogoal", episodes=0))


def test_eval_cli_with_a_saved_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`ebt-policy eval` rebuilds the env from the checkpoint's dataset metadata.

    An untrained tiny EBT policy saved the way training saves one (training itself is tested
    with the trainer; it costs seconds we do not need here).
    """
    from ebt_policy.cli import main
    from ebt_policy.datasets import stats_from_metadata
    from ebt_policy.policies import make_policy, make_policy_config
    from ebt_policy.policies.checkpoint import save_pretrained

    store_path = tmp_path / "demos.zarr"
    collect(CollectConfig("twogoal", 2, store_path, seed=0))
    store = EpisodeStore.open(store_path)
    shape_meta = store.shape_meta(store.metadata["obs_keys"]["low_dim"])
    cfg = make_policy_config("ebt", preset="mlp", mlp_hidden=32)
    policy = make_policy(cfg, shape_meta, stats_from_metadata(store.metadata))
    ckpt = save_pretrained(
        policy, tmp_path / "ckpt", shape_meta=shape_meta, dataset_metadata=store.metadata
    )
    out_json = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(ckpt), "--episodes", "2", "--max-episode-steps", "16"]
    argv += ["--json", str(out_json), "--seed", "7"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "success rate" in printed and "latency p50" in printed
    data = json.loads(out_json.read_text())
    assert data["task"] == "twogoal" and data["policy"] == "ebt"
    assert [e["seed"] for e in data["episodes"]] == [7, 8]
    assert all(e["length"] <= 16 for e in data["episodes"])
    assert data["n_chunks"] > 0 and data["energy_min"] is not None  # the EBT policy's energy
    assert data["mean_descent_steps"] == data["max_descent_steps"] == 2  # presets plan with 2
    # the stopping rule can be changed at evaluation: 1 step, or adaptive up to 20
    assert main([*argv, "--descent-steps", "1"]) == 0
    assert json.loads(out_json.read_text())["max_descent_steps"] == 1
    assert main([*argv, "--descent-steps", "20", "--descent-min-grad", "1e9"]) == 0
    # grad < 1e9: stop after the first
    assert json.loads(out_json.read_text())["max_descent_steps"] == 2
    assert main([*argv, "--descent-steps", "0"]) == 2
    assert "descent_steps must be >= 1" in capsys.readouterr().err
    # a checkpoint without dataset metadata needs --task
    bare = save_pretrained(policy, tmp_path / "bare", shape_meta=shape_meta)
    assert main(["eval", "--checkpoint", str(bare), "--episodes", "1"]) == 2
    assert "pass --task" in capsys.readouterr().err


def test_installed_gymnasium_autoreset_semantics() -> None:
    """Why the runner disables autoreset: check what this gymnasium version does.

    Default (next-step) autoreset spends the step after an episode ends on an unseeded reset and
    ignores that step's action; with autoreset disabled, ``reset_mask`` resets only the masked
    env, with the seed we give it, and leaves the other env's episode running.
    """
    import functools

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    env_fn = functools.partial(make_env, "twogoal", max_episode_steps=3)
    single = env_fn()
    expected, _ = single.reset(seed=42)
    up = np.array([0.0, 1.0], np.float32)

    envs = gym.vector.SyncVectorEnv([env_fn, env_fn])
    envs.reset(seed=[1, 2])
    for _ in range(3):
        _, _, _, truncated, _ = envs.step(np.stack([up, up]))
    assert truncated.all()
    obs, reward, terminated, truncated, _ = envs.step(np.stack([up, up]))  # the autoreset step
    assert not (terminated.any() or truncated.any()) and (reward == 0).all()
    assert not np.allclose(obs["agent_pos"][0], expected["agent_pos"])
    envs.close()

    envs = gym.vector.SyncVectorEnv([env_fn, env_fn], autoreset_mode=AutoresetMode.DISABLED)
    obs, _ = envs.reset(seed=[1, 2])
    obs, *_ = envs.step(np.stack([up, up]))
    before = obs["agent_pos"][1].copy()
    mask = np.array([True, False])
    obs, _ = envs.reset(seed=[42, None], options={"reset_mask": mask})
    np.testing.assert_array_equal(obs["agent_pos"][0], expected["agent_pos"])
    np.testing.assert_array_equal(obs["agent_pos"][1], before)  # untouched
    envs.close()
    single.close()


def test_image_policy_gets_stacked_camera_frames() -> None:
    """A policy whose shape_meta has an rgb key gets the env built with cameras (uint8 HWC)."""

    class ImagePolicy(ChunkPolicy):
        shape_meta = {
            "obs": {
                "agent_pos": {"shape": [2], "type": "low_dim"},
                "overhead_image": {"shape": [84, 84, 3], "type": "rgb"},
            },
            "action": {"shape": [2]},
        }

    policy = ImagePolicy()
    result = evaluate(policy, EvalConfig(task="twogoal", episodes=1, seed=0, max_episode_steps=4))
    assert result.episodes[0].length == 4
    first, _ = policy.calls[0]
    frames = first["overhead_image"]
    assert frames.dtype == np.uint8 and frames.shape == (1, 2, 84, 84, 3)
    np.testing.assert_array_equal(frames[0, 0], frames[0, 1])  # first frame repeated
    second, _ = policy.calls[1]
    assert not np.array_equal(second["overhead_image"][0, 0], second["overhead_image"][0, 1])


def test_ebt_policy_results_do_not_depend_on_workers(tmp_path: Path) -> None:
    """The runner tells a row-aware policy its slots and episode seeds, so a stochastic EBT
    policy's chunks (seeded noise per episode) match between 1 and 2 env workers."""
    from ebt_policy.datasets import stats_from_metadata
    from ebt_policy.policies import make_policy, make_policy_config

    collect(CollectConfig("twogoal", 2, tmp_path / "demos.zarr", seed=0))
    store = EpisodeStore.open(tmp_path / "demos.zarr")
    shape_meta = store.shape_meta(store.metadata["obs_keys"]["low_dim"])
    cfg = make_policy_config("ebt", preset="mlp", mlp_hidden=32)
    policy = make_policy(cfg, shape_meta, stats_from_metadata(store.metadata))
    one, two = (
        evaluate(
            policy,
            EvalConfig(
                metadata=store.metadata, episodes=3, seed=0, workers=w, max_episode_steps=20
            ),
        )
        for w in (1, 2)
    )
    assert _outcomes(one) == _outcomes(two)
    for a, b in zip(one.episodes, two.episodes, strict=True):
        np.testing.assert_allclose(
            # batch sizes differ between 1 and 2 workers: equal up to float32 matmul rounding
            [c.energy for c in a.chunks],
            [c.energy for c in b.chunks],
            rtol=1e-5,
            atol=1e-6,
        )


def test_pusht_coverage_is_the_max_over_the_episode() -> None:
    from ebt_policy.envs import get_task
    from ebt_policy.envs.collect import run_expert_episode

    result = evaluate(
        ExpertPolicy("pusht"), EvalConfig(task="pusht", episodes=1, seed=3, max_episode_steps=12)
    )
    env = make_env("pusht")
    attempt = run_expert_episode(env, get_task("pusht"), 3, max_episode_steps=12)
    env.close()
    record = result.episodes[0]
    assert record.length == attempt.length == 12
    assert record.coverage == attempt.coverage and 0.0 <= record.coverage <= 1.0
    assert result.mean_coverage == record.coverage
    assert json.loads(result.to_json())["mean_coverage"] == record.coverage
