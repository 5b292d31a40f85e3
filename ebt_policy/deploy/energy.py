"""Responses to a chunk's energy, the policy's own score of its plan (lower is better).

Three thresholds, each off by default, checked from the most severe: above ``stop_above`` the
loop stops the robot and latches a fault for the operator; above ``replan_above`` the chunk is
not used: the loop holds and plans again (with ``replan_steps`` descent steps where the policy
has ``set_inference``), and uses that second plan whatever its energy, unless it crosses
``stop_above``; above ``scale_above`` the chunk is used with every step scaled by
``scale_factor`` (a slower, more careful motion). Thresholds are set in energy units
(``--energy-stop`` etc.) or, for a checkpoint with a ``calibration.json`` (``ebt-policy
calibrate``), as quantiles of the energies its planner reached on held-out demonstrations
(``--energy-stop-quantile 0.99``: stop above the 99th percentile); :func:`energy_at_quantile`
converts them.

``statistic="spread"`` (``deploy --energy-score spread``, with ``--best-of K``, K >= 2) applies
the same thresholds to the best-of-K candidates' spread instead (``Chunk.spread``: how much the K
plans disagree), the statistic that warned earliest of failing ``can`` episodes (README); its
quantile thresholds need a calibration measured with the same K (``ebt-policy calibrate
--best-of K``).

``statistic="novelty"`` (``--energy-score novelty``, a checkpoint with a ``novelty.safetensors``
from ``ebt-policy calibrate --novelty``) applies them to the observation's novelty
(``Chunk.novelty``, already a calibrated quantile in [0, 1] of held-out demonstration windows'
distances to the training windows, so a threshold and a quantile threshold are the same number):
the response to an observation unlike anything in training, whatever the planner says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ebt_policy.deploy.safety import check_positive
from ebt_policy.errors import ConfigError

__all__ = ["EnergyConfig", "Response", "Statistic", "energy_at_quantile"]

Response = Literal["use", "scale", "replan", "stop"]
Statistic = Literal["energy", "spread", "novelty"]
STATISTICS = ("energy", "spread", "novelty")


@dataclass
class EnergyConfig:
    """Thresholds on the chunk's ``statistic`` (energy units, or the spread's normalised
    action units); None switches a response off."""

    scale_above: float | None = None
    scale_factor: float = 0.5  # fraction of each step kept when scaling
    replan_above: float | None = None
    replan_steps: int | None = None  # descent steps for the re-plan (default: the policy's)
    stop_above: float | None = None
    statistic: Statistic = "energy"  # which of the chunk's numbers the thresholds apply to

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ConfigError(
                f"EnergyConfig.statistic: expected one of {STATISTICS}, got {self.statistic!r}"
            )
        if not 0 < self.scale_factor <= 1:
            raise ConfigError(
                f"EnergyConfig.scale_factor: must be in (0, 1], got {self.scale_factor}"
            )
        check_positive(self, ("replan_steps",))
        set_ = [(n, getattr(self, n)) for n in ("scale_above", "replan_above", "stop_above")]
        set_ = [(n, v) for n, v in set_ if v is not None]
        for (n1, v1), (n2, v2) in zip(set_, set_[1:], strict=False):
            if not v1 < v2:
                raise ConfigError(f"EnergyConfig: need {n1} < {n2}, got {v1} and {v2}")

    def response(self, energy: float | None, replanned: bool = False) -> Response:
        """What to do with a chunk of ``energy`` (None: a policy without energy; always used)."""
        if energy is None:
            return "use"
        if self.stop_above is not None and energy > self.stop_above:
            return "stop"
        if not replanned and self.replan_above is not None and energy > self.replan_above:
            return "replan"
        if self.scale_above is not None and energy > self.scale_above:
            return "scale"
        return "use"

    def value(self, chunk: Any) -> float | None:
        """The chunk's number the thresholds apply to (its energy, spread or novelty)."""
        return getattr(chunk, self.statistic)


def energy_at_quantile(
    policy: Any, quantile: float, flag: str, statistic: Statistic = "energy"
) -> float:
    """The energy at ``quantile`` (in (0, 1]) of the held-out demonstration energies in the
    policy's calibration. ConfigError naming ``flag`` when the policy has no calibration, it
    was measured with another stopping rule than the policy plans with, or the quantile is out
    of range."""
    from ebt_policy.policies.calibration import LEVELS, matches_stopping_rule

    if not (np.isfinite(quantile) and 0 < quantile <= 1):
        raise ConfigError(f"{flag}: expected a quantile in (0, 1], got {quantile}")
    if statistic == "novelty":  # the novelty score is its own calibrated quantile
        if getattr(policy, "novelty", None) is None:
            raise ConfigError(
                f"{flag}: the checkpoint has no novelty.safetensors (run `ebt-policy calibrate "
                "--novelty` on it)"
            )
        return float(quantile)
    calibration = getattr(policy, "calibration", None)
    if calibration is None:
        raise ConfigError(
            f"{flag}: the checkpoint has no calibration.json (run `ebt-policy calibrate` on it, "
            "or give the threshold in energy units)"
        )
    if not matches_stopping_rule(policy):
        raise ConfigError(
            f"{flag}: calibration.json was measured with {calibration.descent_steps} descent "
            f"steps / min grad {calibration.descent_min_grad:g} / best of {calibration.best_of}, "
            "not the policy's stopping rule and candidates (re-run `ebt-policy calibrate`)"
        )
    if statistic not in calibration.quantiles:
        raise ConfigError(
            f"{flag}: calibration.json has no {statistic!r} quantiles (calibrate with "
            "`ebt-policy calibrate --best-of K`, the deploy's K)"
        )
    return float(np.interp(quantile, LEVELS, calibration.quantiles[statistic]))
