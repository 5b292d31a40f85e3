"""`ebt-policy quickstart` end to end on a tiny budget (twogoal: plain MuJoCo, fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ebt_policy.datasets import EpisodeStore
from ebt_policy.quickstart import _train_seconds


def _quickstart(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ebt_policy.cli", "quickstart", "--task", "twogoal"]
    cmd += ["--out", str(out), "--episodes", "4", "--eval-episodes", "2", "--steps", "20"]
    cmd += ["--batch-size", "32", "--workers", "1", "--device", "cpu", *extra]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def test_quickstart_runs_end_to_end_then_reuses_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = _quickstart(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "success rate" in proc.stdout and "mean descent steps" in proc.stdout

    res = json.loads((out / "quickstart.json").read_text())
    assert res["demos"] == 4 and EpisodeStore.open(out / "demos.zarr").n_episodes == 4
    assert res["train_steps"] == 20 and not res["train_reused"]
    assert res["eval_episodes"] == 2 and 0.0 <= res["success_rate"] <= 1.0
    assert res["mean_descent_steps"] is not None and res["mean_descent_steps"] >= 1
    assert res["latency_p50_ms"] > 0 and res["energy_min"] <= res["energy_max"]
    assert (Path(res["checkpoint"]) / "model.safetensors").is_file()
    assert res["video"] and Path(res["video"]).stat().st_size > 0
    eval_report = json.loads((out / "eval.json").read_text())
    assert len(eval_report["episodes"]) == 2
    # the table's success rate is the evaluation's
    assert res["success_rate"] == eval_report["success_rate"]

    assert res["mean_descent_steps"] == 2  # the preset's own
    # a rerun keeps the demos and the finished checkpoint, and evaluates again (here with 3
    # descent steps instead of the checkpoint's 2)
    ckpt_mtime = (Path(res["checkpoint"]) / "model.safetensors").stat().st_mtime
    again = _quickstart(out, "--no-video", "--descent-steps", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads((out / "quickstart.json").read_text())
    assert res2["train_reused"] and res2["train_steps"] == 20 and res2["demos"] == 4
    assert res2["mean_descent_steps"] == 3
    assert (Path(res2["checkpoint"]) / "model.safetensors").stat().st_mtime == ckpt_mtime
    assert "(reused)" in again.stdout


def test_quickstart_rejects_bad_arguments_in_one_line(tmp_path: Path) -> None:
    proc = _quickstart(tmp_path / "qs", "--minutes", "0")
    assert proc.returncode != 0
    assert "--minutes" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "qs").exists()


def test_train_seconds_sums_intervals_across_resumed_invocations(tmp_path: Path) -> None:
    records = [
        {"step": 10, "steps_per_s": 5.0},
        {"step": 20, "steps_per_s": 10.0},
        # a resumed invocation starts again after step 20
        {"step": 30, "steps_per_s": 2.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert abs(_train_seconds(tmp_path) - (2.0 + 1.0 + 5.0)) < 1e-9
    assert _train_seconds(tmp_path / "missing") == 0.0
