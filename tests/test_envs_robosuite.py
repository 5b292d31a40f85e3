"""robosuite tasks: random actions without MuJoCo warnings, experts, seeding, cameras, metadata.

One env per task is built per module (construction costs ~1 s) and reused by the tests. Random
actions run for two seeds (200 steps each) to keep this module within its share of the fast suite.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ebt_policy.envs import get_task, make_env, make_env_from_metadata

TASKS = ["lift", "can", "square", "stack"]


@pytest.fixture(scope="module")
def envs():
    """Low-dim envs built on first use and shared by the module's tests."""
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = make_env(name)
        return built[name]

    yield get
    for env in built.values():
        env.close()


@pytest.fixture(params=TASKS)
def task_env(request, envs):
    return request.param, envs(request.param)


def _warning_count(env) -> int:
    return int(sum(w.number for w in env.unwrapped.mujoco_data.warning))


def _low_dim_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_random_actions_finite_no_warnings(task_env):
    name, env = task_env
    spec = get_task(name)
    assert env.action_space.shape == (spec.action_dim,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            rng = np.random.default_rng(seed)
            for _ in range(200):
                obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, spec.action_dim))
                assert isinstance(info["success"], bool)
                for key, value in obs.items():
                    assert value.dtype == np.float32 and np.isfinite(value).all(), key
                if terminated or truncated:
                    obs, _ = env.reset()
    assert set(obs) == set(spec.obs_keys)
    assert env.observation_space.contains(obs)
    assert _warning_count(env) == 0


def test_expert_succeeds(task_env):
    name, env = task_env
    spec = get_task(name)
    expert = spec.make_expert(seed=0)
    for seed in range(3):
        expert.reset()
        obs, _ = env.reset(seed=1000 + seed)
        for _ in range(spec.max_episode_steps):
            action = expert.act(obs)
            assert action.dtype == np.float32 and action.shape == (spec.action_dim,)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert info["success"] and terminated, f"{name} expert failed on seed {1000 + seed}"
    assert _warning_count(env) == 0


def test_same_seed_same_observations(task_env):
    name, env = task_env
    actions = np.random.default_rng(0).uniform(-1, 1, (5, get_task(name).action_dim))

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for act in actions:
            out.append(env.step(act)[0])
        return out

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(_low_dim_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not _low_dim_equal(a[0], c[0])


def test_metadata_rebuilds_same_env(envs):
    # one robosuite task suffices: all four share the builder
    name, env = "lift", envs("lift")
    meta = get_task(name).dataset_metadata(images=False)
    rebuilt = make_env_from_metadata(meta)
    try:
        assert (
            rebuilt._max_episode_steps == env._max_episode_steps == get_task(name).max_episode_steps
        )
        assert _low_dim_equal(env.reset(seed=11)[0], rebuilt.reset(seed=11)[0])
    finally:
        rebuilt.close()


def test_cameras_render_84_uint8():
    spec = get_task("lift")
    env = make_env("lift", images=True, render_size=84)
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(2):
            obs, *_ = env.step(np.zeros(spec.action_dim, np.float32))
        for key in spec.rgb_keys:
            img = obs[key]
            assert img.shape == (84, 84, 3) and img.dtype == np.uint8, key
            assert img.std() > 5, f"{key} looks blank"
        assert not np.array_equal(obs["agentview_image"], obs["robot0_eye_in_hand_image"])
        assert env.observation_space.contains(obs)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_expert_success_rate_50_episodes(name, envs):
    """Acceptance: >= 95% over 50 episodes (benchmarks/experts.py prints the same numbers)."""
    spec, env = get_task(name), envs(name)
    expert = spec.make_expert(seed=0)
    successes = 0
    for seed in range(50):
        expert.reset()
        obs, _ = env.reset(seed=seed)
        for _ in range(spec.max_episode_steps):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        successes += info["success"]
    assert successes >= 48, f"{name}: {successes}/50"
