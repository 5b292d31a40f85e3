"""`twogoal`: the multimodal plain-MuJoCo task and its expert."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ebt_policy.envs import get_task, make_env
from ebt_policy.envs.tasks.twogoal import env as twogoal


def _warning_count(env) -> int:
    return int(sum(w.number for w in env.unwrapped.mujoco_data.warning))


def _run_expert(spec, env, seed: int) -> tuple[bool, float]:
    expert = spec.make_expert(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(spec.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            break
    return info["success"], float(obs["agent_pos"][0])


def test_random_actions_finite_no_warnings():
    env = make_env("twogoal")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            rng = np.random.default_rng(seed)
            for _ in range(200):
                obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2))
                assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in obs.values())
                assert env.observation_space.contains(obs)
                if terminated or truncated:
                    obs, _ = env.reset()
    assert _warning_count(env) == 0
    env.close()


def test_truncates_at_max_episode_steps_and_success_terminates():
    spec = get_task("twogoal")
    env = make_env("twogoal")
    env.reset(seed=0)
    for t in range(spec.max_episode_steps):
        _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert not terminated and not info["success"]
        assert truncated == (t == spec.max_episode_steps - 1)
    # keep going after success when asked
    env2 = make_env("twogoal", terminate_on_success=False)
    expert = spec.make_expert(0)
    obs, _ = env2.reset(seed=0)
    succeeded = []
    for _ in range(spec.max_episode_steps):
        obs, _, terminated, truncated, info = env2.step(expert.act(obs))
        assert not terminated
        succeeded.append(info["success"])
        if truncated:
            break
    assert any(succeeded)


def test_expert_succeeds_and_uses_both_modes():
    spec = get_task("twogoal")
    env = make_env("twogoal")
    results = [_run_expert(spec, env, seed) for seed in range(12)]
    assert all(success for success, _ in results)
    sides = {np.sign(x) for _, x in results}
    assert sides == {-1.0, 1.0}, "demonstrations must reach both goals"


def test_mean_of_modes_fails():
    """The average of the two modes (straight up) hits the obstacle and never reaches a goal:
    this is what makes the task separate mode-averaging policies from multimodal ones."""
    env = make_env("twogoal")
    obs, _ = env.reset(seed=0)
    for _ in range(get_task("twogoal").max_episode_steps):
        obs, _, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
        assert not info["success"]
        if truncated:
            break
    top_of_path = obs["agent_pos"][1]
    obstacle_bottom = twogoal.OBSTACLE_CENTER[1] - twogoal.OBSTACLE_HALF[1]
    assert top_of_path < obstacle_bottom


def test_same_seed_same_observations():
    env = make_env("twogoal")
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    c, _ = env.reset(seed=6)
    np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
    assert not np.array_equal(a["agent_pos"], c["agent_pos"])


def test_overhead_image():
    env = make_env("twogoal", images=True, render_size=84)
    obs, _ = env.reset(seed=0)
    img = obs["overhead_image"]
    assert img.shape == (84, 84, 3) and img.dtype == np.uint8
    assert img.std() > 5  # a real scene, not a blank frame
    obs, *_ = env.step(np.zeros(2, np.float32))
    assert env.observation_space.contains(obs)
    env.close()


@pytest.mark.slow
def test_expert_success_rate_50_episodes():
    spec = get_task("twogoal")
    env = make_env("twogoal")
    expert = spec.make_expert(0)
    successes = 0
    for seed in range(50):
        expert.reset()
        obs, _ = env.reset(seed=seed)
        for _ in range(spec.max_episode_steps):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        successes += info["success"]
    assert successes >= 48


@pytest.mark.slow
def test_mse_regression_policy_fails():
    """What the task is for: regressing the mean action of the demonstrations (here an MLP on the
    current and previous observation) stalls between the modes and never reaches a goal."""
    import torch

    torch.manual_seed(0)
    spec = get_task("twogoal")
    env = make_env("twogoal")
    expert = spec.make_expert(0)

    def features(obs, prev):
        cur = np.concatenate([obs["agent_pos"], obs["agent_vel"]])
        return np.concatenate([cur, cur if prev is None else prev]), cur

    xs, ys = [], []
    for seed in range(200):
        expert.reset()
        obs, _ = env.reset(seed=seed)
        prev = None
        for _ in range(spec.max_episode_steps):
            action = expert.act(obs)
            x, prev = features(obs, prev)
            xs.append(x)
            ys.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    x_all, y_all = torch.tensor(np.array(xs)), torch.tensor(np.array(ys))
    mean, std = x_all.mean(0), x_all.std(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 256),
        torch.nn.SiLU(),
        torch.nn.Linear(256, 256),
        torch.nn.SiLU(),
        torch.nn.Linear(256, 2),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3000):
        idx = torch.randint(0, len(x_all), (256,))
        loss = ((net((x_all[idx] - mean) / std) - y_all[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # it fits the demonstrations as well as a mean can

    successes = 0
    for seed in range(20):
        obs, _ = env.reset(seed=10_000 + seed)
        prev = None
        for _ in range(spec.max_episode_steps):
            x, prev = features(obs, prev)
            with torch.no_grad():
                action = net((torch.tensor(x) - mean) / std).numpy()
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        successes += info["success"]
    assert successes <= 2
