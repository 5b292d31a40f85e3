"""`ebt-policy bench suite`: a tiny suite end to end, resuming, and refusals that write nothing.

Tiny settings throughout: the twogoal task (cheapest expert and env), 6 demos, the ``tiny``
presets trained 20 steps with a checkpoint evaluated at 10 and 20, 2 evaluation episodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ebt_policy.bench.suite import run_suite
from ebt_policy.bench.suite_config import SuiteArgs
from ebt_policy.cli import main as cli_main
from ebt_policy.datasets import EpisodeStore
from ebt_policy.errors import ConfigError
from ebt_policy.policies import get_preset

# the EBT row names follow the preset's inference steps
TINY_STEPS = get_preset("ebt", "tiny").policy.descent.descent_steps

TINY = dict(tasks="twogoal", budget_steps=20, eval_every=10, seeds=1, episodes=2, demos=6,
            preset="tiny", workers=1, device="cpu")  # fmt: skip


@pytest.fixture(autouse=True)
def _small_torch() -> None:
    torch.set_num_threads(1)


def tiny_args(out: Path, policies: str = "ebt,mse", **overrides: object) -> SuiteArgs:
    return SuiteArgs(**{**TINY, "out": out, "policies": policies, **overrides})  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime (ns): what a refused command must not change."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_tiny_suite_writes_json_and_markdown_with_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    report = run_suite(tiny_args(out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == report["rows"]
    cells = {(c["cell"]["task"], c["cell"]["policy"], c["cell"]["seed"]) for c in saved["cells"]}
    assert cells == {("twogoal", "ebt", 0), ("twogoal", "mse", 0)}
    rows = {(r["policy"], r["checkpoint"]): r for r in saved["rows"]}
    assert set(rows) == {(p, c) for p in ("ebt", "mse") for c in ("last", "best")}
    for (policy, which), row in rows.items():
        assert row["episodes"] == 2 and row["seeds"] == [0]
        assert 0.0 <= row["success_mean"] <= 1.0
        assert row["latency_p50_ms"] > 0 and row["samples_per_s"] > 0
        assert row["train_steps"] == 20
        assert row["inference_steps"] == (TINY_STEPS if policy == "ebt" else 1.0)
        if which == "last":
            assert row["steps"] == [20]
    for policy in ("ebt", "mse"):
        cell = out / "cells" / "twogoal" / policy / "seed0"
        evals = sorted(p.name for p in (cell / "evals").iterdir())
        assert evals == [f"step_00000010-{policy}.json", f"step_00000020-{policy}.json"]
        seeds = [e["seed"] for e in json.loads((cell / "evals" / evals[0]).read_text())["episodes"]]
        assert seeds == [100_000, 100_001]  # evaluation seeds, disjoint from the demos' 0, 1, ...
    store = EpisodeStore.open(out / "demos" / "twogoal.zarr", mode="r")
    assert store.n_episodes == 6 and store.metadata["collection"]["next_seed"] < 100_000
    md = (out / "results.md").read_text()
    assert f"{os.cpu_count()} cores" in md and "torch " in md
    table = [line for line in md.splitlines() if line.startswith("| twogoal")]
    assert len(table) == 4 and all(line.count("|") == 11 for line in table)


def test_rerun_skips_finished_cells_and_adds_new_ones(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    run_suite(tiny_args(out, policies="mse"))
    mse_cell = out / "cells" / "twogoal" / "mse" / "seed0"
    before = tree(mse_cell)
    run_suite(tiny_args(out, policies="mse,ebt"))  # the same suite, one policy more
    assert tree(mse_cell) == before  # nothing of the finished cell was rewritten
    assert (out / "cells" / "twogoal" / "ebt" / "seed0" / "result.json").exists()
    report = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in report["rows"]} == {"ebt", "mse"}
    ebt_before = tree(out / "cells" / "twogoal" / "ebt")
    run_suite(tiny_args(out, policies="mse", recompute=True))
    after = tree(mse_cell)
    assert set(after) == set(before) and all(after[f] != before[f] for f in before)
    assert tree(out / "cells" / "twogoal" / "ebt") == ebt_before


def test_threads_apply_to_each_cell_and_are_restored(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    run_suite(tiny_args(out, policies="mse", threads=2))
    assert torch.get_num_threads() == 1  # the fixture's setting, back after the cell
    result = json.loads((out / "cells" / "twogoal" / "mse" / "seed0" / "result.json").read_text())
    assert result["train"]["threads"] == 2
    assert "Torch threads per cell: 2." in (out / "results.md").read_text()
    # threads are not part of the suite's identity: the finished cell is reused, not refused
    report = run_suite(tiny_args(out, policies="mse", threads=1))
    assert report["rows"][0]["threads"] == [2]
    with pytest.raises(ConfigError, match="--threads: expected >= 1, got 0"):
        tiny_args(out, threads=0)


def test_report_only_tables_the_finished_cells_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    with pytest.raises(ConfigError, match="no suite there"):
        run_suite(tiny_args(out, policies="mse", report_only=True))
    assert not out.exists()
    run_suite(tiny_args(out, policies="mse"))
    before = tree(out / "cells")
    report = run_suite(tiny_args(out, policies="mse,ebt", report_only=True))
    assert tree(out / "cells") == before  # nothing trained, evaluated or rewritten
    assert {r["policy"] for r in report["rows"]} == {"mse"}
    assert report["missing"] == ["twogoal/ebt/seed0"]
    md = (out / "results.md").read_text()
    assert "Not finished, so not in the table: twogoal/ebt/seed0." in md
    with pytest.raises(ConfigError, match="none of this command's cells"):
        run_suite(tiny_args(out, policies="ebt", report_only=True))


def test_interrupted_cell_resumes_its_training_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ebt_policy.training as training

    real_train = training.train

    def killed_after_first_step(cfg):  # stop by the time budget after 1 step, then "die"
        cfg.minutes = 1e-9
        real_train(cfg)
        raise KeyboardInterrupt

    out = tmp_path / "suite"
    monkeypatch.setattr(training, "train", killed_after_first_step)
    with pytest.raises(KeyboardInterrupt):
        run_suite(tiny_args(out, policies="mse"))
    cell = out / "cells" / "twogoal" / "mse" / "seed0"
    assert [p.name for p in (cell / "run" / "checkpoints").glob("step_*")] == ["step_00000001"]
    assert not (cell / "result.json").exists()
    monkeypatch.setattr(training, "train", real_train)
    run_suite(tiny_args(out, policies="mse"))
    assert (cell / "run" / "checkpoints" / "step_00000001").exists()  # resumed, not restarted
    # exact resume: the same weights as an uninterrupted cell
    straight = tmp_path / "straight"
    run_suite(tiny_args(straight, policies="mse"))
    rel = Path("cells/twogoal/mse/seed0/run/checkpoints/step_00000020/model.safetensors")
    assert (out / rel).read_bytes() == (straight / rel).read_bytes()
    # and as `ebt-policy train` with its defaults: the suite's extra checkpoints change nothing
    plain = training.train(
        training.TrainConfig(dataset=str(out / "demos" / "twogoal.zarr"), out=str(tmp_path / "p"),
                             policy="mse", preset="tiny", steps=20, device="cpu", progress=False)
    )  # fmt: skip
    weights = plain / "checkpoints" / "step_00000020" / "model.safetensors"
    assert weights.read_bytes() == (out / rel).read_bytes()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tasks", "twogoal,nope"], "unknown task 'nope'"),
        (["--policies", "ebt,nope"], "--policies: unknown ['nope']"),
        (["--budget-minutes", "1"], "expected exactly one of them, got both"),
        (["--preset", "nope"], "--preset: unknown preset 'nope'"),
        (["--policies", "diffusion", "--samplers", "euler"], "--samplers: unknown ['euler']"),
        (["--samplers", "ebt=ddim"], "--samplers: only ['diffusion', 'diffusion-unet'] take"),
        (["--episodes", "4"], "holds a suite with other settings (episodes: 2 -> 4)"),
    ],
)
def test_refused_commands_exit_2_with_one_line_and_write_nothing(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite"
    out.mkdir()
    # an earlier suite in --out, written by hand: the refusal must leave it alone
    (out / "suite.json").write_text(json.dumps({"identity": {**json.loads(IDENTITY)}}))
    before = tree(out)
    base = {"--tasks": "twogoal", "--policies": "ebt", "--budget-steps": "20",
            "--eval-every": "10", "--episodes": "2", "--demos": "6", "--preset": "tiny",
            "--out": str(out)}  # fmt: skip
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        base[flag] = value
    argv = ["bench", "suite", *[x for kv in base.items() for x in kv]]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert tree(out) == before


def test_a_refused_command_creates_no_out(tmp_path: Path) -> None:
    argv = ["bench", "suite", "--tasks", "lift", "--budget-steps", "5", "--policies", "nope"]
    assert cli_main([*argv, "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


IDENTITY = json.dumps({
    "budget_steps": 20, "budget_minutes": None, "episodes": 2, "demos": 6, "batch_size": None,
    "images": False,
    "eval_every": 10, "samplers": {}, "presets": {"ebt": "tiny"}, "collect_seed": 0,
})  # fmt: skip


def test_an_out_with_other_files_is_refused(tmp_path: Path) -> None:
    from ebt_policy.errors import ConfigError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no suite.json"):
        run_suite(tiny_args(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_tiny_suite_on_a_local_ray_instance(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "suite"
        run_suite(tiny_args(out, executor="ray", ray_cpus_per_cell=1))
        pids = set()
        for policy in ("ebt", "mse"):
            cell = out / "cells" / "twogoal" / policy / "seed0"
            assert (cell / "result.json").exists()
            result = json.loads((cell / "result.json").read_text())
            pids.add(result["worker"]["pid"])
            assert result["train"]["threads"] == 1  # --ray-cpus-per-cell 1: one torch thread
        assert os.getpid() not in pids  # the cells ran in Ray workers, not in the driver
        report = json.loads((out / "results.json").read_text())
        assert {r["policy"] for r in report["rows"]} == {"ebt", "mse"}
    finally:
        ray.shutdown()


def test_samplers_and_presets_per_policy(tmp_path: Path) -> None:
    from ebt_policy.bench.suite_config import plan_suite

    args = tiny_args(
        tmp_path / "s", policies="ebt,diffusion,diffusion-unet", preset="mlp,diffusion-unet=tiny",
        samplers="ddpm,ddim,diffusion-unet=ddim",
    )  # fmt: skip
    plan = plan_suite(args)
    assert {c.policy: c.variants for c in plan.cells} == {
        "ebt": ("ebt",),
        "diffusion": ("diffusion:ddpm", "diffusion:ddim"),
        "diffusion-unet": ("diffusion-unet:ddim",),
    }
    assert {c.policy: c.preset for c in plan.cells} == {
        "ebt": "mlp", "diffusion": "mlp", "diffusion-unet": "tiny",
    }  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_minutes_budget_plans_steps_with_a_probe_and_keeps_the_plan(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    args = tiny_args(out, policies="mse", budget_steps=None, budget_minutes=0.05, eval_every=None)
    run_suite(args)
    cell = out / "cells" / "twogoal" / "mse" / "seed0"
    plan = json.loads((cell / "plan.json").read_text())
    result = json.loads((cell / "result.json").read_text())
    assert result["train"]["planned_steps"] == plan["steps"] >= 1
    assert 1 <= result["train"]["steps"] <= plan["steps"]
    assert result["train"]["wall_s"] < 0.05 * 60 + 5  # the budget, give or take the last step
    assert not (cell / "probe").exists()


def test_time_left_sums_each_pending_cell_at_its_policys_pace(tmp_path: Path) -> None:
    from ebt_policy.bench.suite_config import plan_suite
    from ebt_policy.bench.suite_progress import Display

    cells = plan_suite(tiny_args(tmp_path / "s", policies="ebt,mse,diffusion", seeds=2)).cells
    pending = [c for c in cells if c.seed == 1]  # seed 0 finished earlier: ebt 100 s, mse 10 s
    display = Display(pending, len(cells), [("ebt", 100.0), ("mse", 10.0)])
    # ebt 100 + mse 10 + diffusion at the mean of every finished cell (55)
    assert display.estimate_s() == pytest.approx(165.0)
    assert Display(pending, len(cells), []).estimate_s() is None  # nothing measured yet: "?"


def test_progress_prints_each_stage_as_a_line_without_a_terminal(tmp_path: Path, capsys) -> None:
    from ebt_policy.bench.suite_config import plan_suite
    from ebt_policy.bench.suite_progress import Display

    cells = plan_suite(tiny_args(tmp_path / "s", policies="ebt,mse", seeds=1)).cells
    with Display(cells, len(cells), []) as display:  # pytest's stderr is not a terminal
        display.start(cells[0])("train")
        display.done(cells[0])
        display.start(cells[1])("eval step_20")
    err = capsys.readouterr().err
    assert f"[0/2 done, left ?] {cells[0].name}: train" in err
    assert f"done 1/2 {cells[0].name}" in err
    assert "[1/2 done, left ~" in err and f"{cells[1].name}: eval step_20" in err
