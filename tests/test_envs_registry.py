"""Task registry: specs, errors, dataset metadata -> the same env."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ebt_policy.envs import get_task, list_tasks, make_env, make_env_from_metadata
from ebt_policy.errors import TaskError

ALL_TASKS = ["can", "lift", "pusht", "square", "stack", "twogoal"]


def test_list_tasks():
    assert list_tasks() == ALL_TASKS


def test_unknown_task_names_known_ones():
    with pytest.raises(TaskError, match="unknown task 'lifft'.*lift"):
        get_task("lifft")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_spec_metadata_is_json_and_consistent(name):
    spec = get_task(name)
    meta = spec.dataset_metadata(images=True)
    assert json.loads(json.dumps(meta)) == meta
    assert meta["task"]["name"] == name
    assert meta["control_hz"] == spec.control_hz
    assert len(meta["action_space"]["low"]) == spec.action_dim
    assert meta["obs_keys"]["rgb"] == list(spec.rgb_keys)
    assert spec.dataset_metadata(images=False)["obs_keys"]["rgb"] == []
    assert set(spec.low_dim_keys) <= set(spec.obs_keys)


def test_metadata_rebuilds_same_env():
    spec = get_task("twogoal")
    meta = spec.dataset_metadata(images=False, terminate_on_success=False)
    a, b = make_env("twogoal", terminate_on_success=False), make_env_from_metadata(meta)
    assert b.unwrapped.terminate_on_success is False
    assert b._max_episode_steps == a._max_episode_steps == spec.max_episode_steps
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    for _ in range(5):
        act = np.array([0.3, 0.8], np.float32)
        oa, *_ = a.step(act)
        ob, *_ = b.step(act)
    for key in oa:
        np.testing.assert_array_equal(oa[key], ob[key])
    c = make_env_from_metadata(meta, images=True)
    assert "overhead_image" in c.reset(seed=0)[0]
    c.close()


def test_bad_metadata_errors():
    with pytest.raises(TaskError, match="no valid 'task'"):
        make_env_from_metadata({"control_hz": 20})
    with pytest.raises(TaskError, match="unknown task"):
        make_env_from_metadata({"task": {"name": "nope", "env_kwargs": {}}})
    with pytest.raises(TaskError, match="unknown keys \\['bogus'\\]"):
        make_env_from_metadata({"task": {"name": "twogoal", "env_kwargs": {"bogus": 1}}})
