"""Import rules of the layout, each checked in a fresh interpreter through ``sys.modules``.

Imports run left to right in the data flow: ``models`` needs nothing of ours but ``errors``;
``policies`` builds on ``models``; what runs a policy (``load_policy`` + ``predict_chunk``, the
coming deploy loop) imports no episode store (zarr, ``ebt_policy.datasets``), no simulator and no
training code, for EBT and for each baseline; ``datasets`` imports no policy, env or training code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).parent / "data" / "ebt_v1_tiny"
STORE_AND_SIM = ["zarr", "mujoco", "ebt_policy.datasets", "ebt_policy.envs"]

RULES = {
    "models": (
        "import ebt_policy.models",
        [*STORE_AND_SIM, "ebt_policy.policies", "ebt_policy.training"],
    ),
    "run a policy": (
        "import numpy as np; from ebt_policy import load_policy; "
        f"policy = load_policy({str(CHECKPOINT)!r}); "
        "policy.predict_chunk({'state': np.zeros((2, policy.n_obs_steps, 4), np.float32)})",
        [*STORE_AND_SIM, "ebt_policy.training"],
    ),
    # the runtime that drives robots: only deploy/robots/sim.py reaches a simulator (through
    # ebt_policy.envs) and only a recording opens the episode store (its public API, lazily)
    "deploy": (
        "import ebt_policy.deploy, ebt_policy.deploy.loop, ebt_policy.deploy.safety, "
        "ebt_policy.deploy.inference, ebt_policy.deploy.record, ebt_policy.deploy.robots, "
        "ebt_policy.deploy.cli, ebt_policy.deploy.bridge, ebt_policy.deploy.robots.ur.robot, "
        "ebt_policy.deploy.robots.ur.fake_rtde, ebt_policy.deploy.robots.ur.fake_server, "
        "ebt_policy.deploy.robots.ur.fake_gripper",
        ["zarr", "mujoco", "ebt_policy.datasets", "ebt_policy.training", "rtde_control"],
    ),
    # recording demonstrations writes the store and may step a simulator, but trains nothing
    "record": (
        "import ebt_policy.record, ebt_policy.record.cli, ebt_policy.record.lockstep",
        ["ebt_policy.training", "ebt_policy.policies", "torch"],
    ),
    # the inference engine, the export and the torch-free ONNX planner
    "inference": (
        "import ebt_policy.inference.engine, ebt_policy.inference.export, "
        "ebt_policy.inference.onnx_runner, ebt_policy.inference.cli",
        [*STORE_AND_SIM, "ebt_policy.training"],
    ),
    "datasets": (
        "import ebt_policy.datasets as d; d.WindowDataset, d.Normalizer, d.compute_stats",
        ["ebt_policy.policies", "ebt_policy.envs", "ebt_policy.training"],
    ),
}


def imported(code: str, forbidden: list[str]) -> list[str]:
    """Run ``code`` in a fresh interpreter; the modules of ``forbidden`` (or below) it imported."""
    check = (
        f"{code}\nimport sys\n"
        f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') "
        f"for f in {forbidden!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return eval(proc.stdout.strip().splitlines()[-1])  # a printed list of str


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule: str) -> None:
    code, forbidden = RULES[rule]
    assert imported(code, forbidden) == [], f"{rule}: imports what it must not"


@pytest.mark.parametrize("name", ["mse", "diffusion", "diffusion-unet"])
def test_running_a_baseline_imports_no_store_sim_or_training(name: str, tmp_path: Path) -> None:
    from ebt_policy.policies import make_policy, make_policy_config, save_pretrained

    shape_meta = {"obs": {"state": {"shape": [4], "type": "low_dim"}}, "action": {"shape": [2]}}
    stats = {
        k: {s: [0.0] * d for s in ("min", "mean", "q01")}
        | {s: [1.0] * d for s in ("max", "std", "q99")}
        for k, d in (("state", 4), ("action", 2))
    }
    cfg = make_policy_config(
        name, "tiny", **({"schedule": {"sampler_steps": 2}} if "diffusion" in name else {})
    )
    save_pretrained(make_policy(cfg, shape_meta, stats), tmp_path / "ckpt", shape_meta=shape_meta)
    code = (
        "import numpy as np; from ebt_policy import load_policy; "
        f"policy = load_policy({str(tmp_path / 'ckpt')!r}); "
        "policy.predict_chunk({'state': np.zeros((2, policy.n_obs_steps, 4), np.float32)})"
    )
    assert imported(code, RULES["run a policy"][1]) == [], (
        f"running {name} imports what it must not"
    )
