"""The policy registry: presets with their training recipes, configs, a new policy in one line,
the Policy base, ShapeMeta, and the conversion of format-1 checkpoint configs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ebt_policy import load_policy
from ebt_policy.errors import CheckpointError, ConfigError
from ebt_policy.models import Normalizer, ShapeMeta
from ebt_policy.policies import (
    ChunkPrediction,
    DescentConfig,
    EBTPolicy,
    Policy,
    Preset,
    TrainRecipe,
    factory,
    get_preset,
    make_policy,
    make_policy_config,
    policy_config_from_dict,
    policy_names,
    register_policy,
    save_pretrained,
)
from ebt_policy.policies.schema import (
    FORMAT_VERSION,
    nest_ebt_config_v1,
    upgrade_checkpoint_config,
)
from ebt_policy.training import TrainConfig

torch.set_num_threads(1)

SHAPE_META = {"obs": {"state": {"shape": [4], "type": "low_dim"}}, "action": {"shape": [2]}}


def _stats() -> dict:
    values = {"min": -1, "max": 1, "mean": 0, "std": 1, "q01": -1, "q99": 1}
    return {
        k: {s: np.full(n, v, np.float32) for s, v in values.items()}
        for k, n in (("state", 4), ("action", 2))
    }


# ---------------------------------------------------------------------------- presets


def test_presets_hold_the_training_recipes_train_config_resolves() -> None:
    """The recipes are the values TRAIN_PRESETS had; warm-up is at most steps // 5."""
    recipes = {
        "paper": (1e-4, 500, 64),
        "small": (3e-4, 200, 64),
        "tiny": (1e-3, 50, 32),
        "mlp": (1e-3, 50, 256),
    }
    for name, (lr, warmup, batch) in recipes.items():
        preset = get_preset("ebt", name)
        assert isinstance(preset, Preset) and preset.train == TrainRecipe(lr, warmup, batch)
        assert preset.policy.preset == name
        cfg = TrainConfig(dataset="d", out="o", preset=name, steps=10_000).resolved()
        assert (cfg.lr, cfg.warmup_steps, cfg.batch_size) == (lr, warmup, batch)
    short = TrainConfig(dataset="d", out="o", preset="paper", steps=100).resolved()
    assert short.warmup_steps == 20
    explicit = TrainConfig(dataset="d", out="o", preset="tiny", lr=0.5, batch_size=3).resolved()
    assert (explicit.lr, explicit.batch_size) == (0.5, 3)
    with pytest.raises(ConfigError, match="huge"):
        TrainConfig(dataset="d", out="o", preset="huge")
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        TrainConfig(dataset="d", out="o", policy="nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("ebt", "tiny").train.lr = 1.0  # type: ignore[misc]


def test_nested_overrides_keep_the_presets_other_descent_fields() -> None:
    cfg = make_policy_config("ebt", "tiny", descent={"descent_steps": 20}, d_model=32)
    assert cfg.descent.descent_steps == 20 and cfg.d_model == 32
    tiny = get_preset("ebt", "tiny").policy.descent
    assert cfg.descent.objective == tiny.objective == "energy_score"  # tiny's, kept
    assert (cfg.descent.train_steps_base, cfg.descent.train_steps_extra) == (2, 3)
    whole = make_policy_config("ebt", "tiny", descent=DescentConfig(alpha=5.0))
    assert whole.descent == DescentConfig(alpha=5.0)
    # configs are copies: changing one leaves the preset alone
    cfg.descent.alpha = 1.0
    assert get_preset("ebt", "tiny").policy.descent.alpha == 1000.0
    assert make_policy_config("ebt", "tiny").descent.alpha == 1000.0


def test_config_errors_name_the_key_and_where_descent_fields_go() -> None:
    with pytest.raises(ConfigError, match=r"\['alpha'\] belong in descent: pass descent="):
        make_policy_config("ebt", "tiny", alpha=4.0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_steps'\]"):
        make_policy_config("ebt", "tiny", max_steps=4)
    with pytest.raises(ConfigError, match=r"descent.*unknown key\(s\) \['max_steps'\]"):
        make_policy_config("ebt", "tiny", descent={"max_steps": 4})
    with pytest.raises(ConfigError, match="descent_min_grad must be >= 0"):
        make_policy_config("ebt", "tiny", descent={"descent_min_grad": -1.0})
    with pytest.raises(ConfigError, match="descent: must be a DescentConfig or a dict"):
        policy_config_from_dict({"name": "ebt", "descent": 3})
    with pytest.raises(ConfigError, match="unknown policy 'no-such-policy'"):
        policy_config_from_dict({"name": "no-such-policy"})


# ---------------------------------------------------------------------------- a new policy


@dataclass
class _ConstConfig:
    name: str = "const"
    preset: str = "custom"
    n_obs_steps: int = 1
    horizon: int = 3
    n_action_steps: int = 2
    scale: list[float] = field(default_factory=lambda: [1.0])


class _ConstPolicy(nn.Module, Policy):
    """Plans ``weight * last state[:Da]`` for every step: a policy with one parameter."""

    name = "const"

    def __init__(self, config: _ConstConfig, shape_meta, stats=None) -> None:
        super().__init__()
        self.config = config
        self.shapes = ShapeMeta.coerce(shape_meta)
        self.n_obs_steps, self.horizon = config.n_obs_steps, config.horizon
        self.n_action_steps = config.n_action_steps
        self.weight = nn.Parameter(torch.tensor(config.scale))

    def predict_chunk(self, obs_window, rows: Sequence[int] | None = None) -> ChunkPrediction:
        last = torch.as_tensor(obs_window["state"][:, -1, : self.shapes.action_dim])
        chunk = (self.weight * last)[:, None].repeat(1, self.horizon, 1).detach().numpy()
        return ChunkPrediction(actions=chunk[:, : self.n_action_steps], chunk=chunk)


@pytest.fixture
def const_policy() -> Iterator[None]:
    presets = {"one": Preset(_ConstConfig(preset="one"), TrainRecipe(1e-3, 0, 4))}
    register_policy("const", _ConstConfig, _ConstPolicy, presets)
    yield
    del factory._REGISTRY["const"]


def test_a_new_policy_is_one_register_line(const_policy, tmp_path: Path) -> None:
    assert "const" in policy_names() and "ebt" in policy_names()
    cfg = make_policy_config("const", "one", scale=[2.0])
    assert cfg == _ConstConfig(preset="one", scale=[2.0])
    assert policy_config_from_dict(dataclasses.asdict(cfg)) == cfg
    assert TrainConfig(dataset="d", out="o", policy="const", preset="one").resolved().lr == 1e-3
    policy = make_policy(cfg, ShapeMeta.from_dict(SHAPE_META))
    out = save_pretrained(policy, tmp_path / "const", shape_meta=policy.shapes)
    loaded = load_policy(out)
    assert isinstance(loaded, _ConstPolicy) and loaded.config == cfg
    obs = {"state": np.arange(8, dtype=np.float32).reshape(1, 2, 4)}
    np.testing.assert_array_equal(loaded.predict_chunk(obs).chunk, [[[8.0, 10.0]] * 3])
    with pytest.raises(ValueError, match="already registered"):
        register_policy("const", _ConstConfig, _ConstPolicy, {})
    with pytest.raises(TypeError, match="Policy subclass"):
        register_policy("other", _ConstConfig, nn.Linear, {})


def test_policy_base_defaults_and_rows() -> None:
    class Minimal(Policy):
        n_obs_steps = n_action_steps = horizon = 1

        def predict_chunk(self, obs_window, rows=None):
            return ChunkPrediction(actions=np.zeros((1, 1, 1)), chunk=np.zeros((1, 1, 1)))

    minimal = Minimal()
    assert minimal.start_episode(0, 7) is None and minimal.reset() is None
    with pytest.raises(TypeError):
        Policy()  # type: ignore[abstract]
    ebt = make_policy(make_policy_config("ebt", "mlp", mlp_hidden=16), SHAPE_META, _stats()).eval()
    assert isinstance(ebt, Policy) and isinstance(ebt, EBTPolicy)
    obs = {"state": np.zeros((2, 2, 4), np.float32)}
    ebt.start_episode(0, 1)
    ebt.start_episode(1, 2)
    a = ebt.predict_chunk(obs, [0, 1]).chunk  # rows positionally, as the base declares
    ebt.start_episode(0, 1)
    ebt.start_episode(1, 2)
    np.testing.assert_array_equal(ebt.predict_chunk(obs, rows=[0, 1]).chunk, a)


def test_set_inference_renamed_fields_travel_with_the_config() -> None:
    policy = make_policy(make_policy_config("ebt", "mlp", mlp_hidden=16), SHAPE_META, _stats())
    policy.set_inference(descent_steps=5, descent_min_grad=0.0)
    assert policy.config.descent.descent_steps == 5 and policy.descent.config.descent_steps == 5
    pred = policy.eval().predict_chunk({"state": np.zeros((3, 2, 4), np.float32)})
    assert pred.steps.tolist() == [5, 5, 5]
    with pytest.raises(ConfigError, match="descent_steps must be >= 1"):
        policy.set_inference(descent_steps=0)


# ---------------------------------------------------------------------------- shapes


def test_shape_meta_accepts_the_old_dict_and_gives_it_back() -> None:
    meta = {
        "obs": {
            "agentview_image": {"shape": [48, 40, 3], "type": "rgb"},
            "state": {"shape": [4], "type": "low_dim"},
        },
        "action": {"shape": [2]},
    }
    shapes = ShapeMeta.from_dict(meta)
    assert shapes.to_dict() == meta and ShapeMeta.coerce(shapes) is shapes
    assert shapes.low_dim == {"state": (4,)} and shapes.rgb == {"agentview_image": (3, 48, 40)}
    assert shapes.action_dim == 2
    cfg = make_policy_config("ebt", "mlp", mlp_hidden=16)
    by_dict = make_policy(cfg, meta, stats=None)
    by_shapes = make_policy(cfg, shapes, stats=None)
    assert list(by_dict.state_dict()) == list(by_shapes.state_dict())
    assert by_shapes.shape_meta == meta
    empty = Normalizer.from_shape_meta(shapes)
    assert empty.keys == ["action", "agentview_image", "state"]
    assert empty.rgb_keys == ["agentview_image"]
    with pytest.raises(ConfigError, match="'action'"):
        ShapeMeta.from_dict({"obs": meta["obs"]})
    with pytest.raises(ConfigError, match="'obs' is empty"):
        ShapeMeta.from_dict({"obs": {}, "action": {"shape": [2]}})
    with pytest.raises(ConfigError, match="'depth' has type 'depth'"):
        ShapeMeta.from_dict({**meta, "obs": {"depth": {"shape": [2], "type": "depth"}}})


def test_normalizer_is_still_importable_from_datasets() -> None:
    from ebt_policy.datasets import Normalizer as FromDatasets
    from ebt_policy.datasets.normalize import Normalizer as FromModule

    assert FromDatasets is Normalizer and FromModule is Normalizer


# ---------------------------------------------------------------------------- schema


def test_format_1_configs_convert_step_by_step() -> None:
    flat = {"name": "ebt", "d_model": 32, "alpha": 10.0, "max_steps": 4, "min_grad": 0.0}
    assert nest_ebt_config_v1(flat) == {
        "name": "ebt",
        "d_model": 32,
        "descent": {"alpha": 10.0, "descent_steps": 4, "descent_min_grad": 0.0, "rms_eps": 1e-6},
    }
    v1 = {
        "format_version": 1,
        "policy": {"name": "ebt", "config": flat},
        "shape_meta": SHAPE_META,
        "train_config": {"policy": "ebt", "policy_overrides": {"max_steps": 4, "d_model": 32}},
    }
    v2 = upgrade_checkpoint_config(v1, "config.json")
    assert v2["format_version"] == FORMAT_VERSION == 4 and v1["format_version"] == 1  # a copy
    assert v2["policy"]["config"]["descent"]["descent_steps"] == 4
    # version 3: a checkpoint from before the objective options was trained with the reference
    assert v2["policy"]["config"]["descent"]["objective"] == "mse"
    assert v2["policy"]["config"]["descent"]["step_scale"] == "exp_energy"
    # version 4: nor did it have the ranking term
    assert v2["policy"]["config"]["descent"]["rank_weight"] == 0.0
    assert v2["train_config"]["policy_overrides"] == {
        "descent": {"descent_steps": 4},
        "d_model": 32,
    }
    assert policy_config_from_dict(v2["policy"]["config"]).descent.alpha == 10.0
    assert upgrade_checkpoint_config(v2, "config.json") == v2
    with pytest.raises(
        CheckpointError, match="x/config.json: format_version 5, this code reads up"
    ):
        upgrade_checkpoint_config({**v2, "format_version": 5}, "x/config.json")
    with pytest.raises(CheckpointError, match="format_version None"):
        upgrade_checkpoint_config({"policy": {}}, "config.json")
