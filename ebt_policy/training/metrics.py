"""The metrics log: ``OUT/metrics.jsonl`` always, TensorBoard when installed; rank 0 writes.

One JSON object per logged step: the step's scalars (loss, grad_norm, lr, the policy's metrics),
``loss_avg`` over the steps since the previous line, throughput, wall time and, on validation
steps, ``val_loss``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def scalar(value: Any) -> float | None:
    """``value`` as a float for logging (a tensor's mean), or None when it is not a number."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


class LogWindow:
    """The steps since the last metrics line: their mean loss and the steps per second."""

    def __init__(self, step: int, batch_size: int) -> None:
        self.batch_size = batch_size
        self.losses: list[float] = []
        self.t_start, self.step_start = time.perf_counter(), step

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def close(self, step: int, epoch: int, out: dict[str, float]) -> dict[str, Any]:
        """The metrics line for ``step`` (``out``: train_step's scalars); starts a new window."""
        now = time.perf_counter()
        steps_per_s = (step - self.step_start) / max(now - self.t_start, 1e-9)
        record = {
            "step": step,
            "epoch": epoch,
            **out,
            "loss_avg": float(np.mean(self.losses)),
            "steps_per_s": steps_per_s,
            "samples_per_s": steps_per_s * self.batch_size,
            "time": time.time(),
        }
        self.losses.clear()
        self.t_start, self.step_start = now, step
        return record


class MetricsLog:
    """metrics.jsonl always; TensorBoard when importable and enabled. Rank 0 only.

    Use as a context manager (closes the files). On resume (``resume_step >= 0``) lines logged
    after that step are dropped, since the resumed run logs them again; a fresh run starts an
    empty file.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step >= 0 and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any]) -> None:
        """Append one line (flushed, so a killed run keeps it) and its scalars to TensorBoard."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
