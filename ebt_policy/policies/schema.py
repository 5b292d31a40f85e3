"""Versions of a checkpoint's ``config.json`` and the converters that bring old ones up to date.

Loading reads every version from 1 to :data:`FORMAT_VERSION`: :func:`upgrade_checkpoint_config`
applies one converter per version step (1 -> 2 -> ...), so a new version adds one function here
and never touches the older ones. Writing always uses the newest version.

Versions:
    1. The EBT config flat: the descent's 14 fields beside the network's, the inference stopping
       rule as ``max_steps`` / ``min_grad``.
    2. The EBT config nests its ``descent`` (a DescentConfig), the stopping rule named
       ``descent_steps`` / ``descent_min_grad``; the train config's ``policy_overrides`` likewise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ebt_policy.errors import CheckpointError

FORMAT_VERSION = 2

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


# format version N -> the converter to version N + 1
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


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
