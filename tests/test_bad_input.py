# ruff: noqa: E501 (the case tables read best one case a line)
"""Malformed input at every entry point (issue 15): checkpoints, command flags, observation
windows, output paths. Each is refused with one line naming the culprit and what was expected,
and nothing on disk changes. (Corrupt episode stores: tests/test_store_validation.py.)

Everything runs in this process (`ebt_policy.cli.main([...])`, the Python API) on the committed
tiny checkpoint, so the file stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ebt_policy import cli
from ebt_policy.cli import main
from ebt_policy.errors import (
    CheckpointError,
    ConfigError,
    EbtPolicyError,
    Interrupted,
    NumericalError,
)
from ebt_policy.policies import NonFiniteEnergyError, load_policy, make_policy, make_policy_config

DATA = Path(__file__).parent / "data"
CKPT_V1 = DATA / "ebt_v1_tiny"


def _digest(path: Path) -> dict[str, str]:
    """Every file (and empty directory) under ``path`` with its content hash."""
    if not path.exists():
        return {}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "d"
        for p in sorted(path.rglob("*"))
    }


def _cli_refuses(argv: list[str], expected: str, capsys, watch: Path) -> str:
    """``main(argv)`` exits 2 with one stderr line containing ``expected``; ``watch`` unchanged."""
    before = _digest(watch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert _digest(watch) == before
    return lines[0]


def _api_refuses(call: Callable[[], object], error: type, expected: str) -> str:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and expected in message, message
    return message


# ---------------------------------------------------------------- checkpoints (config.json)
def _edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(ckpt: Path) -> None:
        path = ckpt / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))

    return apply


def _pop(*keys: str) -> Callable[[Path], None]:
    def edit(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return _edit_config(edit)


def _set(*keys: str, value) -> Callable[[Path], None]:
    def edit(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return _edit_config(edit)


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_bytes(content)


def _replace_by_dir(name: str) -> Callable[[Path], None]:
    def apply(ckpt: Path) -> None:
        (ckpt / name).unlink()
        (ckpt / name).mkdir()

    return apply


def _edit_weights(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(ckpt: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / "model.safetensors")
        edit(tensors)
        save_file(
            {k: v.contiguous().clone() for k, v in tensors.items()}, ckpt / "model.safetensors"
        )

    return apply


def _first_weight(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.endswith("weight") and tensors[k].ndim == 2)


WEIGHTS = (CKPT_V1 / "model.safetensors").read_bytes()
CONFIG = "config.json"
MODEL = "model.safetensors"

# (id, corruption of a copy of the committed checkpoint, file the message names, text it holds)
CHECKPOINT_CASES = [
    # issue 15 defect 8: uneven config.json checks
    ("policy-config-a-list", _set("policy", "config", value=[1, 2]), CONFIG,
     "key 'policy.config': expected an object, got [1, 2]"),
    ("policy-a-string", _set("policy", value="ebt"), CONFIG, "key 'policy': expected an object"),
    ("policy-lacks-config", _pop("policy", "config"), CONFIG, "key 'policy' lacks 'config'"),
    ("policy-name-int", _set("policy", "name", value=3), CONFIG, "key 'policy.name': expected a"),
    ("missing-policy-field", _pop("policy", "config", "d_model"), CONFIG,
     "policy.config: lacks field(s) ['d_model']"),
    ("missing-descent-field", _pop("policy", "config", "alpha"), CONFIG,
     "policy.config.descent: lacks field(s) ['alpha']"),
    ("missing-shape-meta", _pop("shape_meta"), CONFIG, "missing key(s) ['shape_meta']"),
    ("missing-dataset-metadata", _pop("dataset_metadata"), CONFIG,
     "missing key(s) ['dataset_metadata']"),
    ("missing-step", _pop("step"), CONFIG, "missing key(s) ['step']"),
    ("step-a-string", _set("step", value="20"), CONFIG,
     "key 'step': expected null or an integer >= 0, got '20'"),
    ("render-size-string", _set("dataset_metadata", "task", "env_kwargs", value={"render_size": "big"}),
     CONFIG, "key 'dataset_metadata.task.env_kwargs.render_size': expected an integer >= 1, got 'big'"),
    ("render-size-negative", _set("dataset_metadata", "task", "env_kwargs", value={"render_size": -3}),
     CONFIG, "env_kwargs.render_size': expected an integer >= 1, got -3"),
    ("env-kwargs-a-list", _set("dataset_metadata", "task", "env_kwargs", value=[1]), CONFIG,
     "key 'dataset_metadata.task.env_kwargs': expected an object, got [1]"),
    ("shape-meta-a-list", _set("shape_meta", value=[4]), CONFIG, "key 'shape_meta': expected an"),
    ("format-version-too-new", _set("format_version", value=99), CONFIG, "format_version 99"),
    ("format-version-missing", _pop("format_version"), CONFIG, "format_version None"),
    ("field-wrong-type", _set("policy", "config", "d_model", value="big"), CONFIG,
     "d_model must be int, got str 'big'"),
    ("unknown-field", _set("policy", "config", "warp_drive", value=True), CONFIG, "warp_drive"),
    ("heads-do-not-divide", _set("policy", "config", "n_heads", value=5), CONFIG,
     "d_model (32) must be divisible by n_heads (5)"),
    ("unknown-policy", _set("policy", "config", "name", value="other"), CONFIG,
     "unknown policy 'other'; known: ["),
    ("truncated-config", lambda c: (c / CONFIG).write_text((c / CONFIG).read_text()[:200]), CONFIG,
     "not valid JSON"),
    ("config-a-json-list", _write(CONFIG, b"[]"), CONFIG, "expected a JSON object"),
    ("config-not-utf8", _write(CONFIG, b"\xff\xfe\x00garbage"), CONFIG, "not valid JSON"),
    ("config-a-directory", _replace_by_dir(CONFIG), CONFIG, "expected a file, got a directory"),
    ("config-missing", lambda c: (c / CONFIG).unlink(), CONFIG, ": missing"),
    ("obs-shape-differs", _set("shape_meta", "obs", "state", "shape", value=[5]), MODEL,
     "does not match the config: size mismatch"),
    # model.safetensors corruption
    ("weights-truncated", _write(MODEL, WEIGHTS[: len(WEIGHTS) // 2]), MODEL, "unreadable"),
    ("weights-tail-cut", _write(MODEL, WEIGHTS[:-100]), MODEL, "unreadable"),
    ("weights-empty", _write(MODEL, b""), MODEL, "unreadable (truncated or corrupt?)"),
    ("weights-random-bytes", _write(MODEL, os.urandom(4096)), MODEL, "unreadable"),
    ("weights-a-directory", _replace_by_dir(MODEL), MODEL, "expected a file, got a directory"),
    ("weights-missing", lambda c: (c / MODEL).unlink(), MODEL, ": missing"),
    ("weights-extra-tensor", _edit_weights(lambda t: t.update(zzz=torch.zeros(2))), MODEL,
     "unexpected tensors [zzz] (1)"),
    ("weights-missing-tensor", _edit_weights(lambda t: t.pop(_first_weight(t))), MODEL,
     "missing tensors ["),
    ("weights-wrong-shape", _edit_weights(lambda t: t.update({_first_weight(t): torch.zeros(3, 3)})),
     MODEL, "size mismatch for"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("corrupt", "culprit", "expected"),
    [c[1:] for c in CHECKPOINT_CASES],
    ids=[c[0] for c in CHECKPOINT_CASES],
)
def test_bad_checkpoint_is_refused_by_load_policy_and_eval(
    tmp_path, capsys, corrupt, culprit, expected
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(CKPT_V1, ckpt)
    corrupt(ckpt)
    before = _digest(ckpt)
    message = _api_refuses(lambda: load_policy(ckpt), CheckpointError, expected)
    assert message.startswith(f"{ckpt.resolve() / culprit}: "), message
    line = _cli_refuses(
        ["eval", "--checkpoint", str(ckpt), "--episodes", "1"], expected, capsys, ckpt
    )
    assert line == f"error: {message}"
    assert _digest(ckpt) == before


PATH_CASES = [
    ("nowhere", lambda t: t / "nowhere", "no such checkpoint or run directory"),
    ("a-file", lambda t: _touch(t / "file.txt"), "expected a checkpoint directory, got a file"),
    ("empty-directory", lambda t: _mkdir(t / "empty"), "not a checkpoint (expected config.json"),
    ("run-without-last", lambda t: _mkdir(t / "run" / "checkpoints"), "'last' is missing"),
]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    ("make", "expected"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_not_a_checkpoint(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    _api_refuses(lambda: load_policy(path), CheckpointError, expected)
    _cli_refuses(["eval", "--checkpoint", str(path)], expected, capsys, tmp_path)


def test_complete_checkpoint_still_loads_and_its_dict_is_checked_evenly():
    """The committed version-1 checkpoint lists every field: it loads (the converter fills the
    one field version 1 could not set)."""
    policy = load_policy(CKPT_V1)
    assert policy.config.descent.rms_eps == 1e-6


# ---------------------------------------------------------------- devices (issue 15 defect 4)
DEVICE_CASES = [("tpu", "device: got 'tpu', expected one of auto, cpu, cuda, cuda:N")]
if not torch.cuda.is_available():
    DEVICE_CASES.append(("cuda", "device: 'cuda' requested but CUDA is not available"))


@pytest.mark.parametrize(("device", "expected"), DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_eval_with_an_unusable_device_is_one_line(tmp_path, capsys, device, expected):
    _api_refuses(lambda: load_policy(CKPT_V1, device=device), ConfigError, expected)
    argv = [
        "eval",
        "--checkpoint",
        str(CKPT_V1),
        "--device",
        device,
        "--json",
        str(tmp_path / "r.json"),
    ]
    _cli_refuses(argv, expected, capsys, tmp_path)


# ---------------------------------------------------------------- command flags and outputs
@pytest.fixture()
def place(tmp_path) -> Path:
    """A directory holding a file ``file.txt`` and a non-empty directory ``dir``."""
    _touch(tmp_path / "file.txt")
    _touch(tmp_path / "dir" / "thesis.txt")
    return tmp_path


def _eval(*extra: str) -> Callable[[Path], list[str]]:
    return lambda p: ["eval", "--checkpoint", str(CKPT_V1), *[x.format(p=p) for x in extra]]


def _cmd(*words: str) -> Callable[[Path], list[str]]:
    return lambda p: [w.format(p=p) for w in words]


QS = ("quickstart", "--episodes", "1", "--eval-episodes", "1", "--steps", "1", "--workers", "1")
COLLECT = ("collect", "--task", "twogoal", "--episodes", "1")
TRAIN = ("train", "--dataset", "{p}/none.zarr", "--preset", "tiny")

# (id, argv given the directory of the `place` fixture, text of the one-line error)
FLAG_CASES = [
    # issue 15 defect 3: output paths checked before the work
    ("eval-json-a-directory", _eval("--json", "{p}/dir"), "--json {p}/dir: is a directory, expected a file path"),
    ("eval-json-under-a-file", _eval("--json", "{p}/file.txt/r.json"), "{p}/file.txt is a file, expected a directory"),
    ("eval-videos-a-file", _eval("--videos", "{p}/file.txt"), "--videos {p}/file.txt: is a file, expected a directory"),
    ("train-out-a-file", _cmd(*TRAIN, "--out", "{p}/file.txt"), "--out {p}/file.txt: is a file, expected a directory"),
    ("train-out-under-a-file", _cmd(*TRAIN, "--out", "{p}/file.txt/run"), "{p}/file.txt is a file"),
    ("collect-out-a-file", _cmd(*COLLECT, "--out", "{p}/file.txt"), "--out {p}/file.txt: is a file, expected a directory"),
    ("collect-out-under-a-file", _cmd(*COLLECT, "--out", "{p}/file.txt/d.zarr"), "{p}/file.txt is a file"),
    # issue 15 defect 9: no o.zip/ directory left behind
    ("collect-out-zip", _cmd(*COLLECT, "--out", "{p}/o.zip"), "--out {p}/o.zip: .zip stores are read-only"),
    ("quickstart-out-a-file", _cmd(*QS, "--out", "{p}/file.txt"), "--out {p}/file.txt: is a file, expected a directory"),
    # issue 15 defect 1: --fresh never deletes what a quickstart did not write, and validates first
    ("quickstart-fresh-bad-task", _cmd(*QS, "--out", "{p}/dir", "--fresh", "--task", "nosuch"), "unknown task 'nosuch'"),
    ("quickstart-fresh-foreign-files", _cmd(*QS, "--out", "{p}/dir", "--fresh", "--task", "twogoal"),
     "--fresh deletes only what a quickstart writes (demos.zarr, run, eval.json, videos, quickstart.json) but it also holds thesis.txt"),
    # issue 15 defect 9: a quickstart with a bad task leaves no empty --out
    ("quickstart-bad-task", _cmd(*QS, "--out", "{p}/new", "--task", "nosuch"), "unknown task 'nosuch'"),
    ("quickstart-bad-preset", _cmd(*QS, "--out", "{p}/new", "--preset", "huge"), "unknown preset 'huge'"),
    ("quickstart-zero-episodes", _cmd("quickstart", "--out", "{p}/new", "--episodes", "0"), "--episodes: expected >= 1, got 0"),
    ("quickstart-zero-batch", _cmd(*QS, "--out", "{p}/new", "--batch-size", "0"), "--batch-size: expected >= 1, got 0"),
    ("quickstart-zero-minutes", _cmd(*QS, "--out", "{p}/new", "--minutes", "0"), "--minutes: expected > 0, got 0"),
    ("collect-bad-task", _cmd("collect", "--task", "nosuch", "--episodes", "1", "--out", "{p}/new.zarr"), "unknown task 'nosuch'"),
    ("collect-zero-episodes", _cmd("collect", "--task", "twogoal", "--episodes", "0", "--out", "{p}/n.zarr"),
     "episodes must be >= 1, got 0"),
    ("collect-small-render", _cmd(*COLLECT, "--render-size", "2", "--out", "{p}/n.zarr"), "render_size must be >= 8, got 2"),
    ("import-robomimic-out-under-a-file",
     _cmd("dataset", "import-robomimic", "{p}/none.hdf5", "--out", "{p}/file.txt/x.zarr"),
     "{p}/file.txt is a file"),
    ("train-no-dataset", _cmd(*TRAIN, "--out", "{p}/run"), "{p}/none.zarr: no such episode store"),
    ("train-bad-preset", _cmd(*TRAIN, "--out", "{p}/run", "--preset", "huge"), "unknown preset 'huge'"),
    ("train-negative-weight-decay", _cmd(*TRAIN, "--out", "{p}/run", "--weight-decay", "-1"), "weight_decay"),
    ("train-unknown-policy", _cmd(*TRAIN, "--out", "{p}/run", "--device", "cpu", "--policy", "nosuch"), "unknown policy 'nosuch'"),
    ("eval-zero-episodes", _eval("--episodes", "0"), "--episodes must be >= 1, got 0"),
    ("eval-unknown-task", _eval("--task", "nosuch"), "unknown task 'nosuch'"),
    ("eval-checkpoint-task-unknown", _eval("--episodes", "1"), "unknown task 'toy'; known tasks:"),
    ("eval-min-grad-nan", _eval("--descent-min-grad", "nan"), "descent_min_grad must be >= 0, got nan"),
    ("eval-descent-steps-zero", _eval("--descent-steps", "0"), "descent_steps must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES]
)
def test_bad_flags_are_refused_before_anything_is_written(place, capsys, argv, expected):
    _cli_refuses(argv(place), expected.format(p=place), capsys, place)
    assert sorted(p.name for p in place.iterdir()) == ["dir", "file.txt"]  # nothing new


def test_eval_json_into_a_directory_leaves_no_temporary(place, capsys):
    """Issue 15 defect 3: refused before the (long) evaluation, no DIR.tmp beside it."""
    _cli_refuses(
        _eval("--json", "{p}/dir", "--task", "twogoal")(place), "is a directory", capsys, place
    )
    assert not list(place.glob("*.tmp*")) and not list(place.glob(".*"))


def test_quickstart_fresh_removes_only_its_own_layout(tmp_path):
    from ebt_policy.quickstart import remove_own_outputs

    out = tmp_path / "qs"
    for name in ("demos.zarr/zarr.json", "run/metrics.jsonl", "videos/ep.mp4", "eval.json"):
        _touch(out / name)
    _touch(out / ".quickstart.json.abc.tmp")
    remove_own_outputs(out)
    assert out.is_dir() and not list(out.iterdir())


# ---------------------------------------------------------------- Python API entry points
@pytest.fixture(scope="module")
def policy():
    return load_policy(CKPT_V1)


def test_api_entry_points_check_outputs_first(place, policy):
    from ebt_policy.envs.collect import CollectConfig, collect
    from ebt_policy.envs.runner import EvalConfig, evaluate
    from ebt_policy.training import TrainConfig, train

    before = _digest(place)
    cases = [
        (lambda: evaluate(policy, EvalConfig(task="twogoal", json_path=place / "dir")),
         "EvalConfig.json_path"),
        (lambda: evaluate(policy, EvalConfig(task="twogoal", video_dir=place / "file.txt")),
         "EvalConfig.video_dir"),
        (lambda: collect(CollectConfig("twogoal", 1, place / "o.zip")), ".zip stores are read-only"),
        (lambda: train(TrainConfig(dataset=str(place / "x.zarr"), out=str(place / "file.txt"))),
         "TrainConfig.out"),
    ]  # fmt: skip
    for call, expected in cases:
        _api_refuses(call, ConfigError, expected)
    assert _digest(place) == before


def test_episode_store_create_refuses_zip_without_debris(tmp_path):
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.errors import DatasetError

    _api_refuses(lambda: EpisodeStore.create(tmp_path / "o.zip"), DatasetError, "read-only")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- predict_chunk (defect 7)
def _window(b: int = 2, t: int = 2, d: int = 4, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"state": np.zeros((b, t, d), dtype)}


# (id, predict_chunk kwargs, error type, text of the message)
PREDICT_CASES = [
    ("not-a-dict", {"obs_window": [np.zeros((1, 2, 4))]}, EbtPolicyError,
     "obs_window: expected a dict of key -> array (B, 2, ...) with keys ['state'], got list"),
    ("missing-key", {"obs_window": {"pos": np.zeros((1, 2, 4))}}, EbtPolicyError,
     "observation lacks key 'state' (policy keys: ['state'], got ['pos'])"),
    ("batch-zero", {"obs_window": _window(b=0)}, EbtPolicyError,
     "observation 'state' has batch size 0; expected at least 1"),
    ("string-dtype", {"obs_window": {"state": np.full((1, 2, 4), "a")}}, EbtPolicyError,
     "observation 'state' has dtype <U1; expected numbers"),
    ("object-dtype", {"obs_window": {"state": np.full((1, 2, 4), None)}}, EbtPolicyError,
     "observation 'state' has dtype object; expected numbers"),
    ("ragged-list", {"obs_window": {"state": [[[0.0] * 4, [0.0] * 3]]}}, EbtPolicyError,
     "observation 'state': not an array"),
    ("wrong-window", {"obs_window": _window(t=3)}, EbtPolicyError,
     "observation 'state' has shape (2, 3, 4); expected (B, 2, 4)"),
    ("wrong-feature", {"obs_window": _window(d=5)}, EbtPolicyError,
     "observation 'state' has shape (2, 2, 5); expected (B, 2, 4)"),
    ("nan-observation", {"obs_window": {"state": np.full((1, 2, 4), np.nan, np.float32)}},
     EbtPolicyError, "observation 'state' contains NaN or Inf"),
    ("rows-length", {"obs_window": _window(), "rows": [0, 1, 2]}, EbtPolicyError,
     "rows has 3 entries but the observation batch is 2"),
    ("init-chunk-shape", {"obs_window": _window(), "init_chunk": np.zeros((2, 3, 2))},
     EbtPolicyError, "init_chunk has shape (2, 3, 2); expected (2, 16, 2)"),
    ("init-chunk-nan", {"obs_window": _window(), "init_chunk": np.full((2, 16, 2), np.nan)},
     NonFiniteEnergyError, "energy descent produced NaN/Inf at step 0 of 2 (inference)"),
    ("min-grad-nan", {"obs_window": _window(), "descent_min_grad": math.nan}, ConfigError,
     "descent_min_grad must be >= 0, got nan"),
    ("min-grad-negative", {"obs_window": _window(), "descent_min_grad": -1.0}, ConfigError,
     "descent_min_grad must be >= 0, got -1.0"),
    ("steps-inf", {"obs_window": _window(), "descent_steps": math.inf}, ConfigError,
     "descent_steps must be int, got float inf"),
    ("steps-fraction", {"obs_window": _window(), "descent_steps": 2.5}, ConfigError,
     "descent_steps must be int, got float 2.5"),
    ("steps-bool", {"obs_window": _window(), "descent_steps": True}, ConfigError,
     "descent_steps must be int, got bool True"),
    ("steps-zero", {"obs_window": _window(), "descent_steps": 0}, ConfigError,
     "descent_steps must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [c[1:] for c in PREDICT_CASES],
    ids=[c[0] for c in PREDICT_CASES],
)
def test_predict_chunk_refuses_bad_windows_up_front(policy, kwargs, error, expected):
    _api_refuses(lambda: policy.predict_chunk(**kwargs), error, expected)


def test_predict_chunk_batch_sizes_must_agree():
    shape_meta = {
        "obs": {"a": {"shape": [3], "type": "low_dim"}, "b": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]},
    }
    two_keys = make_policy(make_policy_config("ebt", "tiny"), shape_meta)
    window = {"a": np.zeros((2, 2, 3), np.float32), "b": np.zeros((3, 2, 2), np.float32)}
    _api_refuses(
        lambda: two_keys.predict_chunk(window),
        EbtPolicyError,
        "observation 'b' has batch size 3 but 'a' has 2; every key needs the same batch size",
    )


def test_nan_weights_are_one_numerical_error_naming_the_step(capsys):
    """Issue 15 defect 6: in the error hierarchy (one line from the CLI), still a
    FloatingPointError for code that caught it before."""
    broken = load_policy(CKPT_V1)
    with torch.no_grad():
        next(broken.energy.parameters()).fill_(float("nan"))
    with pytest.raises(NumericalError) as info:
        broken.predict_chunk(_window())
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, EbtPolicyError)
    assert "step 0 of 2 (inference)" in str(info.value)


def test_exploding_learning_rate_names_the_training_step(tmp_path):
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.training import TrainConfig, train

    rng = np.random.default_rng(0)
    store = EpisodeStore.create(tmp_path / "toy.zarr", {"task": {"name": "toy", "env_kwargs": {}}})
    for _ in range(2):
        state = rng.uniform(-1, 1, (20, 4)).astype(np.float32)
        store.add_episode({"action": state[:, :2].copy(), "state": state})
    cfg = TrainConfig(
        dataset=str(tmp_path / "toy.zarr"),
        out=str(tmp_path / "run"),
        preset="mlp",
        policy_overrides={"mlp_hidden": 16, "mlp_layers": 1},
        steps=40,
        batch_size=4,
        lr=1e30,
        warmup_steps=0,
        device="cpu",
        progress=False,
    )
    with pytest.raises(NumericalError, match=r"^training step \d+: ") as info:
        train(cfg)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the CLI's error contract
def test_cli_joins_a_multi_line_user_error_into_one_line(monkeypatch, capsys):
    def leaf(argv):
        raise ConfigError("first\n  second")

    monkeypatch.setitem(cli.COMMANDS, ("boom",), (f"{__name__}:_unused", ""))
    monkeypatch.setattr(sys.modules[__name__], "_unused", leaf, raising=False)
    assert main(["boom"]) == 2
    assert capsys.readouterr().err == "error: first; second\n"


def test_cli_bug_gets_a_traceback_and_a_report_hint(monkeypatch, capsys):
    def leaf(argv):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(cli.COMMANDS, ("boom",), (f"{__name__}:_unused", ""))
    monkeypatch.setattr(sys.modules[__name__], "_unused", leaf, raising=False)
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops" in err
    assert err.strip().splitlines()[-1].startswith("error: this is a bug in ebt-policy")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_exit_code_of_a_signal(monkeypatch, capsys, signum, code):
    def leaf(argv):
        raise Interrupted(signum)

    monkeypatch.setitem(cli.COMMANDS, ("boom",), (f"{__name__}:_unused", ""))
    monkeypatch.setattr(sys.modules[__name__], "_unused", leaf, raising=False)
    assert main(["boom"]) == code
    assert "Traceback" not in capsys.readouterr().err


def test_stop_request_turns_the_loops_interrupt_into_the_signal_it_got():
    from ebt_policy.training.stop import StopRequest

    with pytest.raises(Interrupted) as info, StopRequest() as stop:
        stop._handle(signal.SIGTERM, None)
        raise KeyboardInterrupt  # what the training loop raises after saving
    assert info.value.exit_code == 143


def test_broken_pipe_exits_quietly(tmp_path):
    """`ebt-policy dataset info --json STORE | head` with the reader gone."""
    from ebt_policy.datasets import EpisodeStore

    store = EpisodeStore.create(tmp_path / "s.zarr", {"task": {"name": "toy", "env_kwargs": {}}})
    store.add_episode({"action": np.zeros((3, 2), np.float32)})
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run(
        [sys.executable, "-m", "ebt_policy.cli", "dataset", "info", "--json", str(store.path)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
