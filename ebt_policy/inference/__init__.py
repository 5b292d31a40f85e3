"""Inference: the engine that plans EBT chunks fast (compiled steps, bf16, CUDA graphs, warm
starts, best-of-K, batched rows), the export of one descent step (torch.export, ONNX) and a
torch-free onnxruntime planner.

Names load lazily, so ``ebt_policy.inference.onnx_runner`` can be imported without torch.
Nothing here imports training, dataset or simulator code (tests/test_import_rules.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "EngineOptions": "ebt_policy.inference.options",
    "InferenceEngine": "ebt_policy.inference.engine",
    "shift_chunk": "ebt_policy.inference.engine",
    "export_policy": "ebt_policy.inference.export",
    "OnnxPlanner": "ebt_policy.inference.onnx_runner",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'ebt_policy.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
