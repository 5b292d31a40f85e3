"""Plan chunks from an ONNX export (``ebt-policy export CKPT --out DIR``) with onnxruntime and
NumPy alone: this module imports no torch, for a robot PC without PyTorch.

The loop is the engine's: keep stepping while steps < descent_steps - 1 and a row's last
gradient norm exceeds ``descent_min_grad`` (and its last step moved it more than
``descent_min_disp``, when set), a stopped row frozen, then one final step. Shapes are the
export's (static batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebt_policy.errors import ConfigError, NumericalError

META_NAME = "export.json"


@dataclass
class OnnxPlan:
    """One planned chunk per row, robot units (as ``ChunkPrediction``'s fields)."""

    actions: np.ndarray  # (B, Ta, Da)
    chunk: np.ndarray  # (B, Tp, Da)
    energy: np.ndarray  # (B,)
    steps: np.ndarray  # (B,) int64
    grad_norm: np.ndarray  # (B,)


class OnnxPlanner:
    """The three ONNX graphs of an export, each in an onnxruntime session on the CPU.

    Args:
        directory: the export (``export.json`` + ``encode.onnx``, ``step.onnx``,
            ``decode.onnx``).
        threads: onnxruntime intra-op threads (1 keeps a control loop's core to itself).
    """

    def __init__(self, directory: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise ConfigError(f"{directory}: no {META_NAME}; expected an `ebt-policy export` dir")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != "onnx":
            raise ConfigError(f"{meta_path}: format {self.meta.get('format')!r}, expected 'onnx'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions = {
            name: ort.InferenceSession(
                str(directory / file), options, providers=["CPUExecutionProvider"]
            )
            for name, file in self.meta["files"].items()
        }
        self._inputs = {n: [i.name for i in s.get_inputs()] for n, s in self.sessions.items()}
        self.batch = int(self.meta["batch"])
        self.shape = (self.batch, int(self.meta["horizon"]), int(self.meta["action_dim"]))

    def _run(self, name: str, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.sessions[name].run(None, dict(zip(self._inputs[name], arrays, strict=True)))

    def encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Robot-unit observation window (key -> (B, To, ...)) -> the energy's context."""
        arrays = []
        for spec in self.meta["obs"]:
            key, shape, dtype = spec["key"], tuple(spec["shape"]), spec["dtype"]
            if key not in obs:
                raise ConfigError(f"observation lacks key {key!r} (export keys: {self.keys})")
            arr = np.ascontiguousarray(obs[key], dtype=dtype)
            if arr.size != int(np.prod(shape)):
                raise ConfigError(
                    f"observation {key!r} has shape {arr.shape}; this export takes {shape}"
                )
            arrays.append(arr.reshape(shape))
        return self._run("encode", *arrays)[0]

    @property
    def keys(self) -> list[str]:
        return [spec["key"] for spec in self.meta["obs"]]

    def plan(
        self,
        obs: dict[str, np.ndarray],
        x0: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        descent_steps: int | None = None,
        descent_min_grad: float | None = None,
    ) -> OnnxPlan:
        """One chunk per row from ``x0`` (normalised, (B, Tp, Da); default N(0, I) from
        ``rng``), with the export's stopping rule unless overridden."""
        meta = self.meta
        n = int(meta["descent_steps"] if descent_steps is None else descent_steps)
        min_grad = float(meta["descent_min_grad"] if descent_min_grad is None else descent_min_grad)
        min_disp = float(meta["descent_min_disp"])
        if n < 1:
            raise ConfigError(f"descent_steps must be >= 1, got {n}")
        context = self.encode(obs)
        if x0 is None:
            x0 = (rng or np.random.default_rng()).standard_normal(self.shape)
        x = np.ascontiguousarray(x0, dtype=np.float32)
        if x.shape != self.shape:
            raise ConfigError(f"x0 has shape {x.shape}; this export takes {self.shape}")
        v = np.zeros_like(x)
        B = self.batch
        steps = np.zeros(B, np.int64)
        gnorm = np.full(B, np.inf, np.float32)
        disp = np.full(B, np.inf, np.float32)
        active = np.ones(B, bool)
        for i in range(n - 1):
            if i > 0:
                active &= gnorm > min_grad
                if min_disp > 0:
                    active &= disp > min_disp
                if not active.any():
                    break
            x_new, v_new, e, g = self._run("step", context, x, v)
            _check_finite(e, g, i, n)
            if min_disp > 0:
                moved = np.sqrt(((x_new - x) ** 2).reshape(B, -1).mean(axis=1))
                disp = np.where(active, moved, disp)
            m = active[:, None, None]
            x, v = np.where(m, x_new, x), np.where(m, v_new, v)
            gnorm = np.where(active, g, gnorm)
            steps += active
        x, v, e, g = self._run("step", context, x, v)
        _check_finite(e, g, int(steps.max()), n)
        chunk = self._run("decode", x)[0]
        start = int(meta["n_obs_steps"]) - 1
        actions = chunk[:, start : start + int(meta["n_action_steps"])]
        return OnnxPlan(actions=actions, chunk=chunk, energy=e, steps=steps + 1, grad_norm=g)


def _check_finite(e: np.ndarray, g: np.ndarray, step: int, n: int) -> None:
    if not (np.isfinite(e).all() and np.isfinite(g).all()):
        raise NumericalError(f"energy descent produced NaN/Inf at step {step} of {n} (onnx)")
