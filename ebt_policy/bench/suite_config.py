"""`ebt-policy bench suite`: its arguments, their checks, and the cells they expand to.

A suite is a grid of cells, one per (task, policy, seed). Everything that changes what a cell
computes (budget, demos, evaluation episodes, presets, samplers, checkpoint plan, images) is the
suite's *identity*: it is saved in ``OUT/suite.json`` and a later command on the same ``--out``
must ask for the same identity (it may ask for other tasks, policies or seeds: those are more
cells of the same suite). Every check here runs before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ebt_policy.errors import ConfigError

# Evaluation episode i of seed s plays env seed EVAL_SEED_BASE + EVAL_SEED_STRIDE * s + i.
# Collection uses seeds 0, 1, ... (the store's collection.next_seed says how far); the suite
# refuses a store whose collection seeds reach EVAL_SEED_BASE.
EVAL_SEED_BASE = 100_000
EVAL_SEED_STRIDE = 10_000
COLLECT_SEED = 0
SAMPLERS = ("ddpm", "ddim")
DIFFUSION_POLICIES = ("diffusion", "diffusion-unet")


@dataclass
class SuiteArgs:
    """Train and evaluate several policies on several tasks with the same data and budget."""

    tasks: str = "lift,can,square,pusht,twogoal"
    """Comma-separated tasks (see `ebt-policy collect --help`)."""
    policies: str = "ebt,diffusion,diffusion-unet,mse"
    """Comma-separated policies (names of `ebt-policy train --policy`)."""
    budget_steps: int | None = None
    """Training budget in optimiser steps, the same for every policy (reproducible)."""
    budget_minutes: float | None = None
    """Training budget in minutes per cell instead: a 30-step probe measures each policy's speed
    and plans the step count (the LR schedule spans it); training stops at the budget."""
    seeds: int = 3
    """Training seeds 0..seeds-1 per (task, policy); seed s evaluates on env seeds
    100000 + 10000 * s + i."""
    episodes: int = 50
    """Evaluation episodes per checkpoint."""
    demos: int = 100
    """Scripted-expert demonstrations per task (collected once, shared by every cell)."""
    preset: str = "tiny"
    """Preset of every policy, or per policy: ``mlp,diffusion-unet=tiny``."""
    batch_size: int | None = None
    """Training batch size of every policy (default: each preset's recipe; presets of different
    names have different batch sizes, so a mixed --preset trains on different sample counts)."""
    images: bool = False
    """Collect and train with the task's cameras."""
    out: Path = Path("runs/bench-suite")
    """Suite directory: suite.json, demos/<task>.zarr, cells/<task>/<policy>/seed<s>/."""
    json: Path | None = None
    """Results JSON (default OUT/results.json); the Markdown table goes next to it (.md)."""
    eval_every: int | None = None
    """Evaluate a checkpoint every K steps (and the last); default: at each quarter of the
    budget."""
    samplers: str = "ddpm"
    """Samplers the diffusion policies are evaluated with, comma-separated (ddpm: 100 steps,
    ddim: 10), each a row of its own from the same trained checkpoints; per policy as
    ``ddpm,diffusion-unet=ddim``."""
    workers: int = 2
    """Env processes for collection and evaluation."""
    threads: int | None = None
    """Torch intra-op threads of each cell's training and policy inference (recorded in each
    cell's result; not part of the suite's identity, so a resumed suite may change it).
    Default: torch's own (every core) with the local executor; with Ray, the CPUs a cell
    reserves (rounded down, at least 1), so parallel cells' torch pools do not oversubscribe a
    node (the evaluation's --workers env processes come on top)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where cells train and evaluate."""
    executor: Literal["local", "ray"] = "local"
    """local: one cell at a time in this process; ray: cells as Ray tasks."""
    ray_address: str | None = None
    """Ray cluster to join (default: a running local instance, else a new one)."""
    ray_cpus_per_cell: float | None = None
    """CPUs Ray reserves per cell (default: --workers)."""
    recompute: bool = False
    """Recompute the cells of this command even when they finished."""
    report_only: bool = False
    """Train and evaluate nothing: write the table from the cells that have finished (the rest
    are listed under it), e.g. while a suite still runs or after it was stopped."""

    def __post_init__(self) -> None:
        if self.report_only and self.recompute:
            raise ConfigError("--report-only and --recompute: choose one")
        budgets = [b for b in (self.budget_steps, self.budget_minutes) if b is not None]
        if len(budgets) != 1:
            raise ConfigError(
                "--budget-steps / --budget-minutes: expected exactly one of them, got "
                f"{'both' if budgets else 'neither'}"
            )
        if self.budget_steps is not None and self.budget_steps < 1:
            raise ConfigError(f"--budget-steps: expected >= 1, got {self.budget_steps}")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes: expected > 0, got {self.budget_minutes}")
        for name in ("seeds", "episodes", "demos", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}: expected >= 1, got {getattr(self, name)}")
        if self.episodes > EVAL_SEED_STRIDE:  # seed s's episodes must not reach seed s + 1's
            raise ConfigError(
                f"--episodes: expected at most {EVAL_SEED_STRIDE}, got {self.episodes}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads: expected >= 1, got {self.threads}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected >= 1, got {self.batch_size}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"--eval-every: expected >= 1, got {self.eval_every}")
        if self.ray_cpus_per_cell is not None and not self.ray_cpus_per_cell > 0:
            raise ConfigError(f"--ray-cpus-per-cell: expected > 0, got {self.ray_cpus_per_cell}")
        if self.executor != "ray" and self.ray_address is not None:
            raise ConfigError("--ray-address: needs --executor ray")


def split_names(text: str, flag: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"] without duplicates (ConfigError naming ``flag`` when empty)."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ConfigError(f"{flag}: expected a comma-separated list, got {text!r}")
    return names


def per_policy(text: str, policies: list[str], flag: str) -> tuple[list[str], dict[str, list]]:
    """``"a,b,diffusion-unet=c"`` -> (["a", "b"], {"diffusion-unet": ["c"]}): the plain entries
    and each named policy's own (ConfigError for a policy not in ``policies``)."""
    default: list[str] = []
    own: dict[str, list[str]] = {}
    for part in split_names(text, flag):
        name, sep, value = part.partition("=")
        if not sep:
            default.append(part)
        elif name not in policies:
            raise ConfigError(f"{flag}: {name!r} is not one of --policies {policies}")
        else:
            own.setdefault(name, []).append(value)
    return default, own


def parse_presets(text: str, policies: list[str]) -> dict[str, str]:
    """``"mlp,diffusion-unet=tiny"`` -> {policy: preset}: exactly one preset per policy."""
    default, own = per_policy(text, policies, "--preset")
    presets = {p: own.get(p, default) for p in policies}
    wrong = [p for p, names in presets.items() if len(names) != 1]
    if wrong:
        raise ConfigError(f"--preset: expected one preset for each of {wrong}, got {text!r}")
    return {p: names[0] for p, names in presets.items()}


def parse_samplers(text: str, policies: list[str]) -> dict[str, list[str]]:
    """``"ddpm,diffusion-unet=ddim"`` -> the samplers of each diffusion policy in ``policies``."""
    default, own = per_policy(text, policies, "--samplers")
    if set(own) - set(DIFFUSION_POLICIES):
        raise ConfigError(f"--samplers: only {list(DIFFUSION_POLICIES)} take samplers: {text!r}")
    samplers = {p: own.get(p, default) for p in policies if p in DIFFUSION_POLICIES}
    bad = sorted({s for names in samplers.values() for s in names if s not in SAMPLERS})
    if bad or not all(samplers.values()):
        raise ConfigError(f"--samplers: unknown {bad or text!r}; known: {list(SAMPLERS)}")
    return samplers


def checkpoint_steps(total: int, eval_every: int | None) -> tuple[int, list[int]]:
    """``(save_every, steps evaluated)`` for a run of ``total`` steps: every ``eval_every`` (by
    default a quarter of the run) and the last."""
    every = eval_every or max(1, math.ceil(total / 4))
    return every, sorted({*range(every, total, every), total})


@dataclass(frozen=True)
class CellSpec:
    """One cell: everything a (possibly remote) worker needs to train and evaluate it. JSON-able
    (``asdict``), so it travels to a Ray task and into the cell's result file."""

    task: str
    policy: str
    seed: int
    preset: str
    variants: tuple[str, ...]  # "ebt", "mse", "diffusion:ddpm", "diffusion:ddim", ...
    demos_path: str
    cell_dir: str
    budget_steps: int | None
    budget_minutes: float | None
    batch_size: int | None
    eval_every: int | None
    episodes: int
    eval_seed: int
    workers: int
    device: str
    threads: int | None = None  # torch intra-op threads (None: leave torch's setting)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.policy}/seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """What the cell's result depends on (not where it runs)."""
        d = asdict(self)
        for key in ("demos_path", "cell_dir", "workers", "device", "threads"):
            d.pop(key)
        d["variants"] = list(self.variants)
        return d


@dataclass
class SuitePlan:
    """A checked suite: its identity and the cells this command asks for."""

    out: Path
    json_path: Path
    identity: dict[str, Any]
    tasks: list[str]
    cells: list[CellSpec]


def variants_of(policy: str, samplers: dict[str, list[str]]) -> tuple[str, ...]:
    """The evaluated variants of a policy: one per sampler for diffusion policies."""
    if policy in samplers:
        return tuple(f"{policy}:{s}" for s in samplers[policy])
    return (policy,)


def plan_suite(args: SuiteArgs) -> SuitePlan:
    """Check every name and value (ConfigError naming the flag) and expand the cells."""
    from ebt_policy.envs import get_task
    from ebt_policy.policies import get_preset, policy_names
    from ebt_policy.utils import resolve_device
    from ebt_policy.utils.paths import check_output_path

    tasks = split_names(args.tasks, "--tasks")
    for task in tasks:
        get_task(task)  # TaskError naming the known tasks
    policies = split_names(args.policies, "--policies")
    unknown = [p for p in policies if p not in policy_names()]
    if unknown:
        raise ConfigError(f"--policies: unknown {unknown}; known: {policy_names()}")
    presets = parse_presets(args.preset, policies)
    for policy, preset in presets.items():
        try:
            get_preset(policy, preset)
        except ConfigError as exc:
            raise ConfigError(f"--preset: {exc}") from None
    samplers = parse_samplers(args.samplers, policies)
    device = str(resolve_device(args.device))
    out = Path(args.out)
    check_output_path(out, "dir", "--out")
    json_path = Path(args.json) if args.json is not None else out / "results.json"
    check_output_path(json_path, "file", "--json")
    check_output_path(json_path.with_suffix(".md"), "file", "--json (its .md)")
    threads = args.threads
    if threads is None and args.executor == "ray":
        cpus = args.ray_cpus_per_cell if args.ray_cpus_per_cell is not None else args.workers
        threads = max(1, int(cpus))
    identity = {
        "budget_steps": args.budget_steps,
        "budget_minutes": args.budget_minutes,
        "episodes": args.episodes,
        "demos": args.demos,
        "batch_size": args.batch_size,
        "images": args.images,
        "eval_every": args.eval_every,
        "samplers": samplers,  # compared per policy, as presets
        "presets": presets,  # compared per policy (check_same_suite)
        "collect_seed": COLLECT_SEED,
    }
    cells = [
        CellSpec(
            task=task,
            policy=policy,
            seed=seed,
            preset=presets[policy],
            variants=variants_of(policy, samplers),
            demos_path=str(out / "demos" / f"{task}.zarr"),
            cell_dir=str(out / "cells" / task / policy / f"seed{seed}"),
            budget_steps=args.budget_steps,
            budget_minutes=args.budget_minutes,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            episodes=args.episodes,
            eval_seed=EVAL_SEED_BASE + EVAL_SEED_STRIDE * seed,
            workers=args.workers,
            device=device,
            threads=threads,
        )
        for task in tasks
        for policy in policies
        for seed in range(args.seeds)
    ]
    return SuitePlan(out=out, json_path=json_path, identity=identity, tasks=tasks, cells=cells)


# identity entries that map policy -> value: a policy new to the suite brings its own, a policy
# already in it must keep its value
PER_POLICY = ("presets", "samplers")


def check_same_suite(saved: dict[str, Any], plan: SuitePlan) -> None:
    """ConfigError when ``OUT/suite.json`` (``saved``) was written for another identity."""
    old, new = dict(saved.get("identity", {})), dict(plan.identity)
    differing = [
        f"{k}: {old.get(k)!r} -> {new[k]!r}"
        for k in new
        if k not in PER_POLICY and old.get(k) != new[k]
    ]
    for key in PER_POLICY:
        before, now = old.get(key, {}), new[key]
        differing += [
            f"{key} of {p}: {before[p]!r} -> {now[p]!r}"
            for p in now
            if p in before and before[p] != now[p]
        ]
    if differing:
        raise ConfigError(
            f"--out {plan.out}: holds a suite with other settings ({'; '.join(differing)}); "
            "use the same settings or another --out"
        )


def merged_identity(saved: dict[str, Any] | None, plan: SuitePlan) -> dict[str, Any]:
    """The identity to save: this plan's, plus the per-policy values of policies only earlier
    commands asked for."""
    identity = dict(plan.identity)
    if saved is not None:
        for key in PER_POLICY:
            identity[key] = {**saved.get("identity", {}).get(key, {}), **plan.identity[key]}
    return identity
