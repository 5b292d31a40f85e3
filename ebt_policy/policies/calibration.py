"""Uncertainty calibration: how unlike the held-out demonstrations a planned chunk is.

A calibration holds the quantiles (0, 1, ..., 100 percent) of the final energy and of the final
gradient norm that the policy's own inference reached on held-out demonstration windows
(``ebt-policy calibrate``, :mod:`ebt_policy.policies.calibrate_cli`). A planned chunk's
``uncertainty`` is the calibrated quantile of one of them (the empirical CDF, linearly
interpolated): 0 at or below the lowest value seen on the demonstrations, 1 at or above the highest,
0.5 at their median. Higher means less like the demonstrations.

With best-of-K planning (``ebt-policy calibrate --best-of K``, K >= 2) a calibration also holds the
quantiles of the K candidates' ``spread`` (RMS distance from their mean, ``ChunkPrediction.spread``)
and can score by it (``--score spread``): the statistic that best predicted a failing episode
early on ``can`` (README, "Why this energy"). The energy and gradient norm of a best-of-K chunk are
the winner's, a minimum over K: a calibration stores the K it was measured with and scores only
chunks planned with the same K.

Which statistic: ``energy`` by default, for both recipes, because it is the one that measured
better (benchmarks/uncertainty.py). With the ``fixed`` step rule (the ``mlp`` preset) only grad_x E
is trained, so in theory the energy's level is not comparable across observations while
``alpha * ||grad E||`` says how far the plan is from where the field points; measured on Lift the
final gradient norm does not separate perturbed observations (AUROC <= 0.52, and below 0.5 for
large perturbations) while the energy does somewhat (0.61 at 10 cm, 0.81 at 20 cm). Note that
the descent reports E and ||grad E|| at the last look-ahead point, before its final update (at 1
step: at the initial noise). ``--score grad_norm`` selects the other statistic.

Stored as ``calibration.json`` beside ``config.json`` rather than as state_dict buffers: a buffer
would change the weights file and its keys (checkpoints without it would no longer load strictly,
and training's bit-identical weights would change), while a sidecar can be written, replaced or
deleted after training without touching the weights. It records the sha256 of the weights it was
measured with, and :func:`read_calibration` refuses it for other weights.

This module imports no episode store (load_policy + predict_chunk must not); measuring a
calibration lives in :mod:`ebt_policy.policies.calibrate_cli`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import CheckpointError, ConfigError
from ebt_policy.utils import write_json_atomic

CALIBRATION_NAME = "calibration.json"
CALIBRATION_VERSION = 2  # 2 added best_of and spread; version 1 files read as best_of 1
READ_VERSIONS = (1, 2)
STATISTICS = ("energy", "grad_norm", "spread")
LEVELS = tuple(i / 100 for i in range(101))  # the stored quantile levels, 0..100 percent


@dataclass
class Calibration:
    """Quantiles of the final energy, gradient norm (and with best-of-K the candidates' spread)
    on held-out demonstration windows.

    Attributes:
        score: the statistic ``uncertainty`` is the calibrated quantile of (``"energy"``,
            ``"grad_norm"`` or, with ``best_of`` >= 2, ``"spread"``).
        quantiles: statistic -> its values at :data:`LEVELS` (non-decreasing); ``spread``
            present exactly when ``best_of`` >= 2.
        descent_steps, descent_min_grad: the inference stopping rule the values were measured
            with (a chunk planned with another rule gets no score).
        weights_sha256: sha256 of the ``model.safetensors`` measured ("" skips the check).
        info: where the values came from (store, episodes, windows, seeds), for people.
    """

    score: str
    quantiles: dict[str, list[float]]
    descent_steps: int
    descent_min_grad: float
    weights_sha256: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    descent_min_disp: float = 0.0  # the displacement stop (0: off; files without it had it off)
    best_of: int = 1  # candidates per chunk it was measured with (EngineOptions.best_of)

    def __post_init__(self) -> None:
        if self.score not in STATISTICS:
            raise ConfigError(f"calibration score {self.score!r}: expected one of {STATISTICS}")
        if self.best_of < 1:
            raise ConfigError(f"calibration best_of: expected >= 1, got {self.best_of}")
        if self.score == "spread" and self.best_of < 2:
            raise ConfigError(
                "calibration score 'spread': needs best-of-K planning with K >= 2 "
                f"(calibrate with --best-of 4), got best_of {self.best_of}"
            )
        if "spread" in self.quantiles and self.best_of < 2:
            raise ConfigError("calibration quantiles['spread']: only with best_of >= 2")
        for name in self.statistics:
            q = self.quantiles.get(name)
            if q is None or len(q) != len(LEVELS):
                got = "missing" if q is None else f"{len(q)} values"
                raise ConfigError(
                    f"calibration quantiles[{name!r}]: expected {len(LEVELS)} values, got {got}"
                )
            arr = np.asarray(q, dtype=np.float64)
            if not np.isfinite(arr).all() or (np.diff(arr) < 0).any():
                raise ConfigError(
                    f"calibration quantiles[{name!r}]: expected finite non-decreasing numbers"
                )

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics this calibration holds (``spread`` only with best-of-K)."""
        return STATISTICS if self.best_of >= 2 else STATISTICS[:2]

    @classmethod
    def from_values(
        cls,
        energy: np.ndarray,
        grad_norm: np.ndarray,
        *,
        score: str,
        descent_steps: int,
        descent_min_grad: float,
        weights_sha256: str = "",
        info: dict[str, Any] | None = None,
        descent_min_disp: float = 0.0,
        best_of: int = 1,
        spread: np.ndarray | None = None,
    ) -> Calibration:
        """The calibration of per-chunk final energies and gradient norms (each (N,), N >= 1),
        and with ``best_of`` >= 2 the candidates' spreads (N,)."""
        values = {"energy": np.asarray(energy, np.float64), "grad_norm": np.asarray(grad_norm)}
        if best_of >= 2:
            if spread is None:
                raise ConfigError("calibration spread: expected values with best_of >= 2")
            values["spread"] = np.asarray(spread)
        quantiles = {}
        for name, v in values.items():
            v = v.astype(np.float64).reshape(-1)
            if v.size == 0 or not np.isfinite(v).all():
                raise ConfigError(f"calibration {name}: expected finite values, got {v.size}")
            quantiles[name] = [float(x) for x in np.quantile(v, LEVELS)]
        return cls(
            score=score,
            quantiles=quantiles,
            descent_steps=int(descent_steps),
            descent_min_grad=float(descent_min_grad),
            weights_sha256=weights_sha256,
            info=dict(info or {}),
            descent_min_disp=float(descent_min_disp),
            best_of=int(best_of),
        )

    def quantile_of(self, name: str, values: np.ndarray) -> np.ndarray:
        """The calibrated quantile in [0, 1] of ``values`` of statistic ``name`` (monotone)."""
        q = np.asarray(self.quantiles[name], np.float64)
        return np.interp(np.asarray(values, np.float64), q, LEVELS).astype(np.float32)

    def uncertainty(
        self, energy: np.ndarray, grad_norm: np.ndarray, spread: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Per-chunk uncertainty (B,) in [0, 1]: the quantile of the calibrated statistic (None
        when it is ``spread`` and ``spread`` is None)."""
        values = {"energy": energy, "grad_norm": grad_norm, "spread": spread}[self.score]
        return None if values is None else self.quantile_of(self.score, values)

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration.json`` contents."""
        return {
            "version": CALIBRATION_VERSION,
            "score": self.score,
            "levels": list(LEVELS),
            "quantiles": self.quantiles,
            "descent_steps": self.descent_steps,
            "descent_min_grad": self.descent_min_grad,
            "descent_min_disp": self.descent_min_disp,
            "best_of": self.best_of,
            "weights_sha256": self.weights_sha256,
            "info": self.info,
        }


def default_score(policy_config: Any) -> str:
    """The statistic a calibration scores by default: ``energy`` for every EBT recipe (the
    module docstring gives the measurements behind the choice)."""
    del policy_config  # one default today; the signature keeps room for per-recipe choices
    return "energy"


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (the weights a calibration belongs to)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_calibration(calibration: Calibration, directory: str | os.PathLike) -> Path:
    """Write ``calibration.json`` into a checkpoint directory, atomically."""
    return write_json_atomic(Path(directory) / CALIBRATION_NAME, calibration.to_dict())


def read_calibration(
    directory: str | os.PathLike, weights_path: str | os.PathLike | None = None
) -> Calibration | None:
    """The calibration stored in checkpoint ``directory``, None when it has none.

    Raises:
        CheckpointError: one line naming ``calibration.json`` when it is unreadable, malformed,
            of a newer version, or was measured with other weights than ``weights_path``.
    """
    path = Path(directory) / CALIBRATION_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON (truncated?): {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable: {exc.strerror or exc}") from None
    calibration = _from_dict(data, path)
    stale = (
        weights_path is not None
        and calibration.weights_sha256
        and weights_sha256(weights_path) != calibration.weights_sha256
    )
    if stale:
        raise CheckpointError(
            f"{path}: measured with other weights than {Path(weights_path).name} "
            "(run `ebt-policy calibrate` again, or delete it)"
        )
    return calibration


def _from_dict(data: Any, path: Path) -> Calibration:
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = data.get("version")
    if version not in READ_VERSIONS:
        raise CheckpointError(
            f"{path}: key 'version': expected one of {READ_VERSIONS}, got {version!r}"
        )
    levels = data.get("levels")
    if not isinstance(levels, list) or not np.allclose(levels, LEVELS):
        raise CheckpointError(f"{path}: key 'levels': expected 0, 0.01, ..., 1")
    missing = [
        k for k in ("score", "quantiles", "descent_steps", "descent_min_grad") if k not in data
    ]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}")
    if not isinstance(data["quantiles"], Mapping):
        raise CheckpointError(f"{path}: key 'quantiles': expected an object")
    try:
        return Calibration(
            score=data["score"],
            quantiles={k: list(map(float, v)) for k, v in data["quantiles"].items()},
            descent_steps=int(data["descent_steps"]),
            descent_min_grad=float(data["descent_min_grad"]),
            weights_sha256=str(data.get("weights_sha256", "")),
            info=dict(data.get("info") or {}),
            descent_min_disp=float(data.get("descent_min_disp", 0.0)),
            best_of=int(data.get("best_of", 1)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def chunk_uncertainty(
    policy: Any,
    energy: np.ndarray,
    grad_norm: np.ndarray,
    descent_steps: int | None = None,
    descent_min_grad: float | None = None,
    spread: np.ndarray | None = None,
) -> np.ndarray | None:
    """``policy.calibration``'s per-chunk uncertainty, or None when the policy has no
    calibration or plans with another stopping rule or number of candidates than it was
    calibrated with (overrides ``descent_steps`` / ``descent_min_grad``, None: the config's)."""
    if not matches_stopping_rule(policy, descent_steps, descent_min_grad):
        return None
    return policy.calibration.uncertainty(energy, grad_norm, spread)


def planning_best_of(policy: Any) -> int:
    """The number of candidates ``policy`` plans each chunk from (its engine's best_of; 1 for
    a policy without an engine)."""
    engine = policy.__dict__.get("_engine")  # no engine built yet: the default options
    return 1 if engine is None else int(engine.options.best_of)


def matches_stopping_rule(
    policy: Any, descent_steps: int | None = None, descent_min_grad: float | None = None
) -> bool:
    """Whether ``policy`` has a calibration measured with the stopping rule and the number of
    best-of-K candidates it plans with (overrides ``descent_steps`` / ``descent_min_grad``,
    None: the config's)."""
    calibration = getattr(policy, "calibration", None)
    if calibration is None:
        return False
    descent = policy.config.descent
    steps = descent.descent_steps if descent_steps is None else descent_steps
    min_grad = descent.descent_min_grad if descent_min_grad is None else descent_min_grad
    same_grad = math.isclose(min_grad, calibration.descent_min_grad, rel_tol=1e-9, abs_tol=0)
    same_disp = policy.descent.config.descent_min_disp == calibration.descent_min_disp
    same_k = planning_best_of(policy) == calibration.best_of
    return steps == calibration.descent_steps and same_grad and same_disp and same_k
