"""Training cost of EBT-Policy: samples per second per preset, and cheaper recipes.

Two tables, both measured on this run on the current device:

1. Throughput (default): for each preset, a few full training steps (N unrolled second-order
   descent steps, backward, clip, AdamW, LR schedule, EMA: the real ``train_step``) on random
   batches shaped like a low-dim robosuite task (optionally plus one camera). Prints ms/step and
   samples/s.

       python benchmarks/train_throughput.py [--presets tiny small paper mlp] [--steps 3]
           [--batch-size B] [--image-size 84] [--amp] [--threads 1] [--device cpu|cuda]

   A preset may carry descent overrides, ``mlp:rank_weight=0.1`` (comma-separated); list a pair
   twice (``mlp mlp:rank_weight=0.1 mlp mlp:rank_weight=0.1``) to interleave their timings.

2. Recipes (``--recipes``): trains the same model for a fixed wall time per recipe on a store (a
   deterministic toy store by default, or ``--dataset``) and reports the held-out error of the
   predicted chunk with 2 inference descent steps, so recipes with different losses compare on what
   matters: fewer unrolled steps, final-step-only loss, bf16 autocast. With a simulator store
   (``ebt-policy collect``) ``--eval-episodes N`` adds the closed-loop success rate.

       python benchmarks/train_throughput.py --recipes [--seconds 45] [--recipe-preset tiny]
           [--dataset lift.zarr --eval-episodes 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebt_policy.policies import make_policy, make_policy_config
from ebt_policy.training.config import TrainConfig
from ebt_policy.training.distributed import LossModule
from ebt_policy.training.loop import train_step
from ebt_policy.training.optim import make_ema, make_optimizer, make_scheduler

STATE_DIM, ACTION_DIM = 19, 7  # about robosuite Lift's low-dim observation and OSC action


def _shape_meta(image_size: int) -> dict[str, Any]:
    obs = {"state": {"shape": [STATE_DIM], "type": "low_dim"}}
    if image_size:
        obs["agentview_image"] = {"shape": [image_size, image_size, 3], "type": "rgb"}
    return {"obs": obs, "action": {"shape": [ACTION_DIM]}}


def _stats() -> dict[str, dict[str, np.ndarray]]:
    def one(n: int) -> dict[str, np.ndarray]:
        return {
            "min": -np.ones(n),
            "max": np.ones(n),
            "mean": np.zeros(n),
            "std": np.ones(n),
            "q01": -np.ones(n),
            "q99": np.ones(n),
        }

    return {"state": one(STATE_DIM), "action": one(ACTION_DIM)}


def _batch(policy: Any, batch_size: int, image_size: int, device: torch.device) -> dict:
    to, tp = policy.n_obs_steps, policy.horizon
    obs = {"state": torch.rand(batch_size, to, STATE_DIM) * 2 - 1}
    if image_size:
        obs["agentview_image"] = torch.randint(
            0, 256, (batch_size, to, image_size, image_size, 3), dtype=torch.uint8
        )
    batch = {
        "obs": obs,
        "action": torch.rand(batch_size, tp, ACTION_DIM) * 2 - 1,
        "obs_pad": torch.zeros(batch_size, to, dtype=torch.bool),
        "action_pad": torch.zeros(batch_size, tp, dtype=torch.bool),
    }
    return {
        k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in batch.items()
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for spec in args.presets:
        preset, _, overrides = spec.partition(":")
        torch.manual_seed(0)
        policy_cfg = make_policy_config("ebt", preset=preset)
        for item in filter(None, overrides.split(",")):
            key, _, value = item.partition("=")
            current = getattr(policy_cfg.descent, key, None)
            if current is None or isinstance(current, bool):
                raise SystemExit(
                    f"--presets {spec!r}: {key!r} is not a numeric or text descent field"
                )
            setattr(policy_cfg.descent, key, type(current)(value))
        policy_cfg.descent.__post_init__()  # validate the overrides
        policy = make_policy(policy_cfg, _shape_meta(args.image_size), stats=_stats()).to(device)
        cfg = TrainConfig(
            dataset="-",
            out="-",
            preset=preset,
            steps=1000,
            batch_size=args.batch_size or None,  # None: the preset's recipe
            amp=args.amp,
        ).resolved()
        batch_size = cfg.batch_size
        optimizer = make_optimizer(policy, cfg)
        scheduler = make_scheduler(optimizer, cfg)
        ema = make_ema(policy, cfg)
        model = LossModule(policy).train()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
        batch = _batch(policy, batch_size, args.image_size, device)
        times, n_unrolled = [], []
        for i in range(args.warmup + args.steps):
            _sync(device)
            t0 = time.perf_counter()
            out = train_step(model, batch, optimizer, scheduler, ema, policy, cfg, autocast)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                n_unrolled.append(out.get("n_steps", float("nan")))
        step_s = statistics.median(times)
        rows.append(
            {
                "preset": spec,
                "energy": policy_cfg.energy,
                "params": sum(p.numel() for p in policy.parameters()),
                "batch": batch_size,
                "unrolled_N": float(np.mean(n_unrolled)),
                "ms_per_step": 1000 * step_s,
                "samples_per_s": batch_size / step_s,
                "unrolled_samples_per_s": batch_size / step_s * float(np.mean(n_unrolled)),
            }
        )
        print(f"  {spec}: {rows[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------------------------
# recipes


RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (policy config overrides, train config overrides)
    "paper N=6+U{0..4}, mean loss": ({"train_steps_base": 6, "train_steps_extra": 4}, {}),
    "N=3, mean loss": ({"train_steps_base": 3, "train_steps_extra": 0}, {}),
    "N=2, mean loss": ({"train_steps_base": 2, "train_steps_extra": 0}, {}),
    "N=6+U{0..4}, final-step loss": (
        {"train_steps_base": 6, "train_steps_extra": 4, "loss_final_step_only": True},
        {},
    ),
    "N=3, final-step loss": (
        {"train_steps_base": 3, "train_steps_extra": 0, "loss_final_step_only": True},
        {},
    ),
    "N=3, mean loss, bf16 autocast": (
        {"train_steps_base": 3, "train_steps_extra": 0},
        {"amp": True},
    ),
}


def _toy_store(path: Path, n_episodes: int = 40, length: int = 60) -> Path:
    """Smooth nonlinear state -> action map with momentum in the state (deterministic)."""
    from ebt_policy.datasets import EpisodeStore

    rng = np.random.default_rng(0)
    store = EpisodeStore.create(
        path, {"task": {"name": "toy", "env_kwargs": {}}, "obs_keys": {"low_dim": ["state"]}}
    )
    w = rng.normal(size=(STATE_DIM, ACTION_DIM)).astype(np.float32) / np.sqrt(STATE_DIM)
    for _ in range(n_episodes):
        s = rng.uniform(-1, 1, size=STATE_DIM).astype(np.float32)
        states, actions = [], []
        for _t in range(length):
            a = np.tanh(2 * s @ w).astype(np.float32)
            states.append(s.copy())
            actions.append(a)
            push = np.resize(a, STATE_DIM)
            s = (0.95 * s + 0.1 * push + 0.02 * np.sin(3 * s[::-1])).astype(np.float32)
        store.add_episode({"action": np.stack(actions), "state": np.stack(states)})
    return path


def _heldout_error(run_dir: Path, dataset: str, max_windows: int = 512) -> float:
    """MSE (robot units) of 2-step predicted chunks vs the demonstrations on validation episodes."""
    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore, WindowDataset, split_episodes

    config = json.loads((run_dir / "config.json").read_text())
    policy = load_policy(run_dir)
    store = EpisodeStore.open(dataset)
    _, val_ids = split_episodes(store.n_episodes, config["train"]["val_fraction"], seed=0)
    ds = WindowDataset(
        dataset,
        config["train"]["obs_keys"],
        n_obs_steps=policy.n_obs_steps,
        horizon=policy.horizon,
        episodes=val_ids,
    )
    idx = np.linspace(0, len(ds) - 1, min(max_windows, len(ds))).astype(int)
    items = [ds[int(i)] for i in idx]
    obs = {k: np.stack([it["obs"][k].numpy() for it in items]) for k in items[0]["obs"]}
    target = np.stack([it["action"].numpy() for it in items])
    pred = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0), descent_steps=2)
    return float(np.mean((pred.chunk - target) ** 2))


def _success_rate(run_dir: Path, dataset: str, episodes: int) -> float:
    """Closed-loop success in the store's own task (its metadata rebuilds the env)."""
    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.envs.runner import EvalConfig, evaluate

    metadata = EpisodeStore.open(dataset).metadata
    config = EvalConfig(metadata=metadata, episodes=episodes, seed=100_000)
    result = evaluate(load_policy(run_dir), config)
    return float(result.success_rate)


def recipes(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ebt_policy.training import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or str(_toy_store(Path(tmp) / "toy.zarr"))
        for name, (policy_over, train_over) in RECIPES.items():
            if args.only and not any(s in name for s in args.only):
                continue
            out = Path(tmp) / f"run{len(rows)}"
            cfg = TrainConfig(
                dataset=dataset,
                out=str(out),
                preset=args.recipe_preset,
                policy_overrides=policy_over,
                steps=1_000_000,  # the time budget ends the run; the schedule barely decays
                minutes=args.seconds / 60,
                batch_size=args.batch_size or None,
                device=args.device,
                val_every=0,
                save_every=0,
                log_every=10,
                progress=False,
                **train_over,
            )
            train(cfg)
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            row = {
                "recipe": name,
                "steps_done": lines[-1]["step"],
                "train_final_loss": float(np.mean([_final_loss(m) for m in lines[-5:]])),
                "heldout_mse_2_steps": _heldout_error(out, dataset),
            }
            if args.eval_episodes:
                row["success"] = _success_rate(out, dataset, args.eval_episodes)
            rows.append(row)
            print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Plain fixed-width table (stays readable in logs and pipes, unlike a terminal widget)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(v) for v in row.values()] for row in rows]
    names = list(rows[0])
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    left = [isinstance(rows[0][n], str) for n in names]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if is_left else v.rjust(w)
            for v, w, is_left in zip(values, widths, left, strict=True)
        )

    print(line(names))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print(line(c))


def _final_loss(metrics: dict) -> float:
    """The final descent step's loss, whatever the objective calls it (final_mse, ...)."""
    return next(v for k, v in metrics.items() if k.startswith("final_"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper", "mlp"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per preset")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the preset's recipe")
    parser.add_argument("--image-size", type=int, default=0, help="add one camera (e.g. 84)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--recipes", action="store_true", help="compare cheaper recipes")
    parser.add_argument("--seconds", type=float, default=45.0, help="training time per recipe")
    parser.add_argument("--recipe-preset", default="tiny")
    parser.add_argument("--dataset", default=None, help="store for --recipes (default: toy)")
    parser.add_argument(
        "--eval-episodes", type=int, default=0, help="closed-loop success per recipe (sim store)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="recipes whose name contains")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "image_size": args.image_size,
    }
    print(json.dumps(header))
    if args.recipes:
        _print_table(recipes(args))
    else:
        _print_table(throughput(args, device))


if __name__ == "__main__":
    main()
