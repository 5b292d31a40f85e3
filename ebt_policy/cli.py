"""The `ebt-policy` command.

Each subcommand lives next to the code it drives and is imported only when called, so
`ebt-policy dataset info` does not pay for importing MuJoCo or torch models. A leaf command is a
function ``main(argv: list[str]) -> int | None`` (usually a thin `tyro.cli` over a dataclass).
Errors derived from :class:`ebt_policy.errors.EbtPolicyError` are printed as one line, no traceback.
"""

from __future__ import annotations

import importlib
import sys

# command words -> "module:function". Only commands that exist are listed here.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("quickstart",): (
        "ebt_policy.quickstart:main",
        "Collect demos, train EBT-Policy, evaluate it in MuJoCo, print the results (one command).",
    ),
    ("dataset", "info"): (
        "ebt_policy.datasets.cli:info_main",
        "Summarise an episode store: episodes, steps, keys, action ranges, metadata.",
    ),
    ("dataset", "import-robomimic"): (
        "ebt_policy.datasets.cli:import_robomimic_main",
        "Convert a robomimic HDF5 file into an episode store.",
    ),
    ("train",): ("ebt_policy.training.cli:main", "Train a policy on an episode store."),
    ("collect",): (
        "ebt_policy.envs.cli:collect_main",
        "Collect scripted-expert demonstrations into an episode store (resumable).",
    ),
    ("eval",): (
        "ebt_policy.envs.cli:eval_main",
        "Evaluate a checkpoint in simulation over seeded episodes (success, energy, videos).",
    ),
    ("bench", "latency"): (
        "ebt_policy.bench.cli:latency_main",
        "Per-chunk latency of EBT, Diffusion Policy (DDPM / DDIM) and MSE at one preset.",
    ),
}


def _usage(prefix: tuple[str, ...] = ()) -> str:
    lines = ["usage: ebt-policy " + " ".join(prefix) + (" " if prefix else "") + "COMMAND ...", ""]
    lines.append("commands:")
    for words, (_, help_text) in COMMANDS.items():
        if words[: len(prefix)] == prefix:
            lines.append(f"  {' '.join(words):<28} {help_text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ebt-policy` console script."""
    from ebt_policy.errors import EbtPolicyError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from ebt_policy import __version__

        print(f"ebt-policy {__version__}")
        return 0
    # longest match of command words
    for n in range(min(len(argv), 3), 0, -1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            target = COMMANDS[words][0]
            module_name, func_name = target.split(":")
            func = getattr(importlib.import_module(module_name), func_name)
            try:
                ret = func(argv[n:])
            except EbtPolicyError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
            return int(ret or 0)
    prefix = tuple(w for w in argv[:1] if any(k[0] == w for k in COMMANDS))
    print(f"error: unknown command: {' '.join(argv[:2])}\n\n{_usage(prefix)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
