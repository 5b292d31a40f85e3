"""Export an EBT policy as three static-shape graphs: encode, one descent step, decode.

* ``encode(obs...) -> context``: robot-unit observations (the policy's keys, in
  ``export.json``'s order) through the normaliser, frame encoder and observation encoder;
* ``step(context, x, v) -> (x_next, v_next, energy, grad_norm)``: one inference descent step with
  the gradient w.r.t. the chunk inside the graph (a vector-Jacobian product), so one call is one
  step and the loop (with its stopping rule) stays in the caller;
* ``decode(x) -> chunk``: normalised chunk to robot units.

The gradient: ``torch.export`` cannot trace ``torch.autograd.grad`` (a fake tensor ends up among
the program's constants) nor ``torch.func.grad`` (functorch wrappers cannot become meta tensors),
so the step is first traced by ``make_fx``, which runs autograd and records the backward as plain
aten ops, and that flat graph is exported. Attention is the explicit matmul-softmax form: the
fused CPU attention's backward has no ONNX translation. ONNX files come from the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``). :mod:`.onnx_runner` plans with them without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch._decomp
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from ebt_policy.errors import ConfigError
from ebt_policy.policies.ebt.step import autograd_energy_grad, inference_step
from ebt_policy.utils import atomic_directory, write_json_atomic

FORMATS = ("onnx", "torch")
META_NAME = "export.json"
GRAPHS = ("encode", "step", "decode")


class _Encode(nn.Module):
    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy
        self.keys = [*policy.low_dim_keys, *policy.rgb_keys]

    def forward(self, *obs: Tensor) -> Tensor:
        normalized = self.policy._normalize_obs(dict(zip(self.keys, obs, strict=True)))
        return self.policy.encode(normalized, augment=False)


class _Decode(nn.Module):
    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.normalizer = policy.normalizer

    def forward(self, x: Tensor) -> Tensor:
        return self.normalizer.unnormalize("action", x)


def example_inputs(policy: Any, batch: int) -> dict[str, tuple[Tensor, ...]]:
    """Zero tensors of each graph's static input shapes (batch ``batch``)."""
    To, Tp, Da = policy.n_obs_steps, policy.horizon, policy.action_dim
    obs = [torch.zeros(batch, To, *policy._low_dim_shapes[k]) for k in policy.low_dim_keys]
    for key in policy.rgb_keys:
        C, H, W = policy._rgb_shapes[key]
        obs.append(torch.zeros(batch, To, H, W, C, dtype=torch.uint8))
    with torch.no_grad():
        context = _Encode(policy)(*obs)
    x = torch.zeros(batch, Tp, Da)
    return {"encode": tuple(obs), "step": (context, x, x.clone()), "decode": (x,)}


def step_graph(policy: Any, context: Tensor, x: Tensor) -> torch.fx.GraphModule:
    """One descent step as a flat aten graph (forward, VJP w.r.t. the chunk, update)."""
    cfg = policy.descent.config

    def step(context: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        grad_fn = autograd_energy_grad(lambda chunk: policy.energy(context, chunk, fused=False))
        x_next, v_next, e, g = inference_step(grad_fn, x, v, cfg)
        return x_next, v_next, e, g.flatten(1).norm(dim=1).float()

    return make_fx(step, tracing_mode="real", decomposition_table=_BACKWARD_DECOMPOSITIONS)(
        context, x, torch.zeros_like(x)
    )


# Activation backward ops the ONNX exporter has no translation for (the `mlp` preset's SiLU:
# aten.silu_backward), written out as the forward ops they are made of.
_BACKWARD_DECOMPOSITIONS = torch._decomp.get_decompositions(
    [
        torch.ops.aten.silu_backward,
        torch.ops.aten.mish_backward,
        torch.ops.aten.elu_backward,
        torch.ops.aten.softplus_backward,
        torch.ops.aten.hardswish_backward,
    ]
)


def exported_programs(policy: Any, batch: int = 1) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` programs of the three graphs at batch ``batch`` (policy in eval mode,
    parameters frozen during the trace)."""
    if batch < 1:
        raise ConfigError(f"export: batch must be >= 1, got {batch}")
    policy = policy.eval()
    inputs = example_inputs(policy, batch)
    frozen = [p for p in policy.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        graphs = {
            # make_fx runs the normaliser's data-dependent checks on the real inputs, which
            # torch.export alone refuses to trace
            "encode": make_fx(_Encode(policy), tracing_mode="real")(*inputs["encode"]),
            "step": step_graph(policy, *inputs["step"][:2]),
            "decode": make_fx(_Decode(policy), tracing_mode="real")(*inputs["decode"]),
        }
        return {name: torch.export.export(g, inputs[name]) for name, g in graphs.items()}
    finally:
        for p in frozen:
            p.requires_grad_(True)


def export_metadata(policy: Any, batch: int, fmt: str) -> dict[str, Any]:
    """What a runner needs besides the graphs: shapes, windows and the stopping rule."""
    cfg = policy.descent.config
    obs = [{"key": k, "shape": [batch, policy.n_obs_steps, *policy._low_dim_shapes[k]],
            "dtype": "float32"} for k in policy.low_dim_keys]  # fmt: skip
    for key in policy.rgb_keys:
        C, H, W = policy._rgb_shapes[key]
        obs.append({"key": key, "shape": [batch, policy.n_obs_steps, H, W, C], "dtype": "uint8"})
    return {
        "format": fmt, "batch": batch, "obs": obs, "horizon": policy.horizon,
        "action_dim": policy.action_dim, "n_obs_steps": policy.n_obs_steps,
        "n_action_steps": policy.n_action_steps, "descent_steps": cfg.descent_steps,
        "descent_min_grad": cfg.descent_min_grad, "descent_min_disp": cfg.descent_min_disp,
        "files": {name: f"{name}.{'onnx' if fmt == 'onnx' else 'pt2'}" for name in GRAPHS},
    }  # fmt: skip


def export_policy(
    policy: Any, out: str | Path, fmt: str = "onnx", batch: int = 1, overwrite: bool = False
) -> Path:
    """Write ``out/`` with ``export.json`` and the three graphs (``.onnx`` or ``.pt2``); built
    under a temporary name, so a failed export leaves nothing at ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists; choose another --out")
    programs = exported_programs(policy, batch)
    meta = export_metadata(policy, batch, fmt)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name, program in programs.items():
            path = tmp / meta["files"][name]
            if fmt == "torch":
                torch.export.save(program, str(path))
            else:
                onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
                onnx_program.save(str(path))
        write_json_atomic(tmp / META_NAME, meta)
    return out


def load_torch_export(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, name -> callable module) of a ``--format torch`` export."""
    directory = Path(directory)
    meta = json.loads((directory / META_NAME).read_text())
    modules = {
        name: torch.export.load(str(directory / meta["files"][name])).module() for name in GRAPHS
    }
    return meta, modules
