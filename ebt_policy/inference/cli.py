"""`ebt-policy export`: write a checkpoint's encode / descent-step / decode graphs.

Usage::

    ebt-policy export CKPT --out DIR [--format onnx|torch] [--batch 1]

``--format onnx`` files run without PyTorch (:class:`ebt_policy.inference.OnnxPlanner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass
class ExportArgs:
    """Export an EBT checkpoint as static-shape graphs (one call of the step graph = one descent
    step, the gradient w.r.t. the chunk inside it; the loop stays in the caller)."""

    checkpoint: Annotated[Path, tyro.conf.Positional]
    """Run or checkpoint directory of an EBT policy."""
    out: Path
    """Directory to create (refused if it exists)."""
    format: Literal["onnx", "torch"] = "onnx"
    """onnx: encode/step/decode.onnx for onnxruntime; torch: torch.export .pt2 programs."""
    batch: int = 1
    """Static batch size of the graphs (robots planned per call)."""


def main(argv: list[str]) -> int:
    """Entry point of `ebt-policy export`."""
    from ebt_policy import load_policy
    from ebt_policy.errors import ConfigError
    from ebt_policy.inference.export import export_policy

    args = tyro.cli(ExportArgs, args=argv, prog="ebt-policy export")
    if args.out.exists():
        raise ConfigError(f"--out {args.out}: already exists; choose another directory")
    policy = load_policy(args.checkpoint)
    if getattr(policy, "name", None) != "ebt":
        raise ConfigError(f"{args.checkpoint}: export takes an EBT policy, got {policy.name!r}")
    out = export_policy(policy, args.out, args.format, batch=args.batch)
    print(f"wrote {out} ({args.format}, batch {args.batch})")
    return 0
