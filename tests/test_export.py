"""Export: the ONNX and torch.export graphs of the golden checkpoint plan the recorded chunks
(within float tolerance), the onnxruntime planner runs without torch, and `ebt-policy export`
refuses to overwrite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ebt_policy import load_policy  # noqa: E402
from ebt_policy.cli import main as cli_main  # noqa: E402
from ebt_policy.inference.export import export_policy, load_torch_export  # noqa: E402
from ebt_policy.inference.onnx_runner import OnnxPlanner  # noqa: E402

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "ebt_v1_tiny"
GOLDEN = DATA / "golden_v1_tiny.safetensors"
ATOL = 1e-5  # robot units; the exported step uses the unfused attention (rounding only)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    return export_policy(load_policy(CHECKPOINT), out, "onnx", batch=5)


def test_onnx_planner_plans_the_golden_chunks(onnx_dir: Path, golden) -> None:
    planner = OnnxPlanner(onnx_dir)
    obs = {"state": golden["obs.state"].numpy()}
    fixed = planner.plan(obs, x0=golden["noise"].numpy())
    np.testing.assert_allclose(fixed.chunk, golden["chunk"].numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(fixed.energy, golden["energy"].numpy(), atol=1e-6, rtol=0)
    assert fixed.steps.tolist() == golden["steps"].tolist()
    np.testing.assert_array_equal(fixed.actions, fixed.chunk[:, 1:9])
    with safe_open(str(GOLDEN), framework="pt") as f:
        meta = f.metadata()
    adaptive = planner.plan(
        obs,
        x0=golden["noise"].numpy(),
        descent_steps=int(meta["adaptive.descent_steps"]),
        descent_min_grad=float(meta["adaptive.descent_min_grad"]),
    )
    assert adaptive.steps.tolist() == golden["adaptive.steps"].tolist() == [20, 3, 6, 5, 5]
    # Rows that stopped within 6 steps agree to rounding. Row 0's 20 steps do not: at this
    # checkpoint's step size the descent amplifies 1e-6 differences to O(1) by step 20, so
    # long descents agree only bit for bit (eager) or not at all.
    want = golden["adaptive.chunk"].numpy()
    np.testing.assert_allclose(adaptive.chunk[1:], want[1:], atol=1e-4, rtol=0)


def test_onnx_planner_refuses_a_batch_it_was_not_exported_for(onnx_dir: Path) -> None:
    from ebt_policy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'state' has shape \(2, 2, 4\)"):
        OnnxPlanner(onnx_dir).plan({"state": np.zeros((2, 2, 4), np.float32)})


def test_onnx_planner_imports_no_torch(onnx_dir: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from ebt_policy.inference.onnx_runner import OnnxPlanner\n"
        f"p = OnnxPlanner({str(onnx_dir)!r})\n"
        "plan = p.plan({'state': np.zeros((5, 2, 4), np.float32)}, rng=np.random.default_rng(0))\n"
        "assert plan.chunk.shape == (5, 16, 2), plan.chunk.shape\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_torch_export_steps_match_eager(tmp_path: Path, golden) -> None:
    out = export_policy(load_policy(CHECKPOINT), tmp_path / "pt2", "torch", batch=5)
    meta, modules = load_torch_export(out)
    assert meta["descent_steps"] == 2
    with torch.no_grad():
        context = modules["encode"](golden["obs.state"])
        x, v = golden["noise"], torch.zeros_like(golden["noise"])
        for _ in range(meta["descent_steps"]):
            x, v, energy, grad_norm = modules["step"](context, x, v)
        chunk = modules["decode"](x)
    torch.testing.assert_close(chunk, golden["chunk"], atol=ATOL, rtol=0)
    torch.testing.assert_close(energy, golden["energy"], atol=1e-6, rtol=0)


def test_export_cli_refuses_an_existing_directory(tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["export", str(CHECKPOINT), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_mlp_preset_exports_and_plans_what_eager_plans(tmp_path: Path) -> None:
    """The quickstart's preset (an MLP energy with SiLU, the energy-score recipe): its step's
    SiLU backward has no ONNX translation and must be decomposed before export."""
    from ebt_policy.policies import make_policy, make_policy_config

    shape_meta = {"obs": {"state": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}
    stats = {
        k: {"min": [-1.0] * n, "max": [1.0] * n, "mean": [0.0] * n, "std": [1.0] * n}
        | {"q01": [-1.0] * n, "q99": [1.0] * n}
        for k, n in (("state", 3), ("action", 2))
    }
    torch.manual_seed(0)
    policy = make_policy(make_policy_config("ebt", "mlp"), shape_meta, stats).eval()
    planner = OnnxPlanner(export_policy(policy, tmp_path / "onnx", "onnx", batch=2))
    rng = np.random.default_rng(0)
    obs = {"state": rng.uniform(-1, 1, (2, policy.n_obs_steps, 3)).astype(np.float32)}
    x0 = rng.standard_normal(planner.shape).astype(np.float32)
    got = planner.plan(obs, x0=x0)
    want = policy.predict_chunk(obs, init_chunk=torch.from_numpy(x0))
    np.testing.assert_allclose(got.chunk, np.asarray(want.chunk), atol=ATOL, rtol=0)
