"""Versions of a checkpoint's ``config.json`` and the converters that bring old ones up to date.

Loading reads every version from 1 to :data:`FORMAT_VERSION`: :func:`upgrade_checkpoint_config`
applies one converter per version step (1 -> 2 -> ...), so a new version adds one function here
and never touches the older ones. Writing always uses the newest version.

Versions:
    1. The EBT config flat: the descent's 14 fields beside the network's, the inference stopping
       rule as ``max_steps`` / ``min_grad``.
    2. The EBT config nests its ``descent`` (a DescentConfig), the stopping rule named
       ``descent_steps`` / ``descent_min_grad``; the train config's ``policy_overrides`` likewise.
    3. The EBT descent names its training objective and step rule (``objective``,
       ``energy_score_beta``, ``eqm_weight``, ``step_scale``, ``descent_min_disp``); every earlier
       checkpoint was trained with the reference recipe, whose values the converter writes.
    4. The EBT descent names its ranking term (``rank_weight``, ``rank_reg``, ``rank_noise``,
       ``rank_scale``); every earlier checkpoint was trained without it (``rank_weight`` 0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ebt_policy.errors import CheckpointError

FORMAT_VERSION = 4

# The descent fields of a version-1 EBT config, with their version-2 names inside "descent".
_V1_DESCENT_FIELDS = {
    **{name: name for name in (
        "alpha", "temperature", "momentum", "rms_norm", "exp_energy_min", "exp_energy_max",
        "train_steps_base", "train_steps_extra", "sigma_max", "sigma_min", "alpha_random_scale",
        "loss_final_step_only",
    )},
    "max_steps": "descent_steps",
    "min_grad": "descent_min_grad",
}  # fmt: skip
# Version 1 could not set the RMS epsilon: every version-1 policy ran with this value.
_V1_RMS_EPS = 1e-6


def nest_ebt_config_v1(flat: dict[str, Any], *, whole: bool = True) -> dict[str, Any]:
    """A version-1 EBT config dict in the version-2 form: its descent fields move, renamed, into
    a ``descent`` dict placed where the first of them was. A ``whole`` config also gets the RMS
    epsilon it ran with; a partial one (``policy_overrides``) only what it names."""
    if "descent" in flat:  # already nested (written by hand, or converted twice)
        return dict(flat)
    out: dict[str, Any] = {}
    descent: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _V1_DESCENT_FIELDS:
            if not descent:
                out["descent"] = descent
            descent[_V1_DESCENT_FIELDS[key]] = value
        else:
            out[key] = value
    if whole and descent:
        descent["rms_eps"] = _V1_RMS_EPS
    return out


def _v1_to_v2(config: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: nest the EBT descent fields (the only policy version 1 had was EBT)."""
    policy = config.get("policy")
    if isinstance(policy, dict) and policy.get("name") == "ebt":
        flat = policy.get("config")
        if isinstance(flat, dict):
            policy["config"] = nest_ebt_config_v1(flat)
    train = config.get("train_config")
    if isinstance(train, dict) and train.get("policy", "ebt") == "ebt":
        overrides = train.get("policy_overrides")
        if isinstance(overrides, dict):
            train["policy_overrides"] = nest_ebt_config_v1(overrides, whole=False)
    config["format_version"] = 2
    return config


# What every version-2 EBT policy ran with: the reference objective and step rule.
_V2_REFERENCE_OBJECTIVE = {
    "objective": "mse",
    "energy_score_beta": 1.0,
    "eqm_weight": 0.0,
    "step_scale": "exp_energy",
    "descent_min_disp": 0.0,
}


def _v2_to_v3(config: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: an EBT descent without objective fields was the reference recipe."""
    descent = _ebt_descent(config)
    if descent is not None:
        for key, value in _V2_REFERENCE_OBJECTIVE.items():
            descent.setdefault(key, value)
    config["format_version"] = 3
    return config


# What every version-3 EBT policy ran with: no ranking term (the other values are inert then).
_V3_NO_RANKING = {"rank_weight": 0.0, "rank_reg": 0.1, "rank_noise": 0.5, "rank_scale": 0.0}


def _v3_to_v4(config: dict[str, Any]) -> dict[str, Any]:
    """Version 3 -> 4: an EBT descent without ranking fields was trained without the term."""
    descent = _ebt_descent(config)
    if descent is not None:
        for key, value in _V3_NO_RANKING.items():
            descent.setdefault(key, value)
    config["format_version"] = 4
    return config


def _ebt_descent(config: dict[str, Any]) -> dict[str, Any] | None:
    """The EBT policy's ``descent`` dict inside a checkpoint config, or None."""
    policy = config.get("policy")
    if not (isinstance(policy, dict) and policy.get("name") == "ebt"):
        return None
    inner = policy.get("config")
    descent = inner.get("descent") if isinstance(inner, dict) else None
    return descent if isinstance(descent, dict) else None


# format version N -> the converter to version N + 1
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


def upgrade_checkpoint_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of a checkpoint's ``config.json`` contents at :data:`FORMAT_VERSION`.

    Raises:
        CheckpointError: naming ``where`` when the version is missing, unknown or newer than this
            code.
    """
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{where}: format_version {version!r}, expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version}, this code reads up to {FORMAT_VERSION} "
            "(written by a newer ebt-policy?)"
        )
    config = copy.deepcopy(config)
    while config["format_version"] < FORMAT_VERSION:
        config = UPGRADES[config["format_version"]](config)
    return config


# Every key a current config.json holds: a checkpoint says everything it needs, and nothing is
# filled in from today's defaults (an older layout is brought up to date by UPGRADES above).
REQUIRED_KEYS = (
    "format_version",
    "policy",
    "shape_meta",
    "dataset_metadata",
    "train_config",
    "step",
)


def _expect(ok: bool, where: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise CheckpointError(f"{where}: key {key!r}: expected {expected}, got {text}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_checkpoint_config(config: dict[str, Any], where: str) -> None:
    """CheckpointError naming ``where`` and the key when a current-version ``config.json`` lacks
    a key or holds a value of the wrong type (the policy config's own fields are checked when the
    policy config is built from it)."""
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(
            f"{where}: missing key(s) {missing} (a checkpoint lists everything it was built with)"
        )
    policy = config["policy"]
    _expect(isinstance(policy, dict), where, "policy", "an object {name, config}", policy)
    for key in ("name", "config"):
        if key not in policy:
            raise CheckpointError(f"{where}: key 'policy' lacks {key!r}")
    _expect(isinstance(policy["name"], str), where, "policy.name", "a string", policy["name"])
    _expect(
        isinstance(policy["config"], dict), where, "policy.config", "an object", policy["config"]
    )
    for key in ("shape_meta", "dataset_metadata", "train_config"):
        _expect(isinstance(config[key], dict), where, key, "an object", config[key])
    step = config["step"]
    _expect(
        step is None or (_is_int(step) and step >= 0),
        where,
        "step",
        "null or an integer >= 0",
        step,
    )
    task = config["dataset_metadata"].get("task")
    if task is None:
        return
    _expect(isinstance(task, dict), where, "dataset_metadata.task", "an object", task)
    if "name" in task:
        _expect(
            isinstance(task["name"], str),
            where,
            "dataset_metadata.task.name",
            "a string",
            task["name"],
        )
    kwargs = task.get("env_kwargs", {})
    _expect(
        isinstance(kwargs, dict), where, "dataset_metadata.task.env_kwargs", "an object", kwargs
    )
    if "render_size" in kwargs:
        size = kwargs["render_size"]
        ok = _is_int(size) and size >= 1
        _expect(ok, where, "dataset_metadata.task.env_kwargs.render_size", "an integer >= 1", size)
    if "images" in kwargs:
        images = kwargs["images"]
        _expect(
            isinstance(images, bool),
            where,
            "dataset_metadata.task.env_kwargs.images",
            "true or false",
            images,
        )
