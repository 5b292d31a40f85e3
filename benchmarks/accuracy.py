"""Open-loop accuracy: how far each policy's planned chunks are from the held-out demonstrations.

    OMP_NUM_THREADS=1 python benchmarks/accuracy.py NAME=RUN:STORE[:STEPS] [...] \\
        [--windows 1000] [--seeds 2]

Every run is any policy (EBT, MSE, diffusion) with the store it was trained on; STEPS overrides
an EBT run's descent steps. Windows come from the episodes each run's training split held out,
evenly spaced; each is planned from ``--seeds`` initial noises. Errors are in normalised action
units (the demonstrations span [-1, 1] per dimension), over the actions that are not padding:

* ``chunk MSE``: the whole planned chunk (Tp steps) against the demonstrated one;
* ``executed MSE``: the Ta actions the runner executes (``ChunkPrediction.actions``);
* ``spread``: the RMS distance between two plans of the same window from different noise (0 for
  a regressor; a generative policy should spread where the demonstrations do).

On a multimodal task a low MSE is not the goal (the average of two modes scores better than
either mode); on a unimodal one it is where the accuracy a regressor has but an energy policy
lacks shows up. Prints one table measured on this run.
"""

from __future__ import annotations

import argparse

import numpy as np


def parse_spec(text: str) -> tuple[str, str, str, int | None]:
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    if len(parts) == 3:
        return name, parts[0], parts[1], int(parts[2])
    if len(parts) == 2:
        return name, parts[0], parts[1], None
    raise SystemExit(f"{text!r}: expected NAME=RUN:STORE[:STEPS]")


def measure(spec: str, windows: int, seeds: int) -> list[str]:
    import torch

    from ebt_policy import load_policy
    from ebt_policy.datasets import EpisodeStore
    from ebt_policy.policies.calibrate_cli import held_out_episodes, window_subset
    from ebt_policy.policies.checkpoint import read_checkpoint_config

    name, run, store_path, steps = parse_spec(spec)
    policy = load_policy(run)
    if steps is not None:
        policy.set_inference(descent_steps=steps)
    store = EpisodeStore.open(store_path, "r")
    episodes = held_out_episodes(read_checkpoint_config(run)["train_config"], store.n_episodes)
    ds, idx = window_subset(policy, store, episodes, windows)
    to, ta = policy.n_obs_steps, policy.n_action_steps

    def norm(a: np.ndarray) -> np.ndarray:  # robot units -> the policy's [-1, 1] action units
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(a, np.float32), device=policy.device)
            return policy.normalizer.normalize("action", x).double().cpu().numpy()

    chunk_se, chunk_n, exec_se, exec_n, plans = 0.0, 0, 0.0, 0, []
    for seed in range(seeds):
        seed_plans = []
        for start in range(0, len(idx), 256):
            items = [ds[int(i)] for i in idx[start : start + 256]]
            obs = {k: np.stack([np.asarray(it["obs"][k]) for it in items]) for k in items[0]["obs"]}
            target = norm(np.stack([it["action"].numpy() for it in items]))  # (B, Tp, Da)
            valid = ~np.stack([it["action_pad"].numpy() for it in items])  # (B, Tp)
            gen = torch.Generator(device=policy.device).manual_seed(seed * 1_000_003 + start)
            kw = {} if policy.name == "mse" else {"generator": gen}  # a regressor draws no noise
            pred = policy.predict_chunk(obs, **kw)
            chunk = norm(pred.chunk)
            se = ((chunk - target) ** 2).mean(axis=-1)  # (B, Tp)
            chunk_se += float(se[valid].sum())
            chunk_n += int(valid.sum())
            ex, ev = se[:, to - 1 : to - 1 + ta], valid[:, to - 1 : to - 1 + ta]
            exec_se += float(ex[ev].sum())
            exec_n += int(ev.sum())
            seed_plans.append(chunk)
        plans.append(np.concatenate(seed_plans))
    spread = float(np.sqrt(((plans[0] - plans[1]) ** 2).mean())) if len(plans) > 1 else float("nan")
    steps_used = getattr(policy.config, "descent", None)
    steps_text = (
        str(steps if steps is not None else steps_used.descent_steps) if steps_used else "-"
    )
    return [
        name,
        str(policy.name),
        steps_text,
        str(len(idx)),
        f"{chunk_se / max(chunk_n, 1):.4f}",
        f"{exec_se / max(exec_n, 1):.4f}",
        f"{spread:.4f}",
    ]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN:STORE[:STEPS]")
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    table = Table(title="Open-loop accuracy on held-out demonstration windows (normalised units)")
    for col in ("run", "policy", "steps", "windows", "chunk MSE", "executed MSE", "spread"):
        table.add_column(col, justify="left" if col in ("run", "policy") else "right")
    for spec in args.runs:
        table.add_row(*measure(spec, args.windows, args.seeds))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
