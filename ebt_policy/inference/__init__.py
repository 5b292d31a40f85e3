"""Inference: the engine that plans EBT chunks fast (compiled steps, bf16, CUDA graphs, warm
starts, best-of-K, batched rows) and the export of one descent step (torch.export, ONNX).

Nothing here imports training, dataset or simulator code (tests/test_import_rules.py).
"""

from __future__ import annotations

from ebt_policy.inference.engine import InferenceEngine, shift_chunk
from ebt_policy.inference.options import EngineOptions

__all__ = ["EngineOptions", "InferenceEngine", "shift_chunk"]
