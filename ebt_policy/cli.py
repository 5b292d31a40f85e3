"""The `ebt-policy` command.

Each subcommand lives next to the code it drives and is imported only when called, so
`ebt-policy dataset info` does not pay for importing MuJoCo or torch models. A leaf command is a
function ``main(argv: list[str]) -> int | None`` (usually a thin `tyro.cli` over a dataclass).

Exit codes: 0 done; 2 a user error (any :class:`ebt_policy.errors.EbtPolicyError`, printed as one
line ``error: <file/key/value>: <what was expected>``, no traceback); 1 a bug (the traceback, then
a line asking to report it); 130 stopped by Ctrl-C (SIGINT) and 143 by SIGTERM, after the clean
stop the command documents. A closed output pipe (``ebt-policy dataset info --json | head``) ends
the command quietly.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Annotated, Any, TypeVar

T = TypeVar("T")

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
    ("calibrate",): (
        "ebt_policy.policies.calibrate_cli:main",
        "Calibrate a checkpoint's uncertainty (energy quantiles, observation novelty) on "
        "held-out demos.",
    ),
    ("record",): ("ebt_policy.record.cli:main", "Record teleoperated demonstrations on a robot."),
    ("deploy",): ("ebt_policy.deploy.cli:main", "Run a trained policy on a robot in real time."),
    ("export",): ("ebt_policy.inference.cli:main", "Export an EBT policy as ONNX / torch.export."),
    ("robot-server",): ("ebt_policy.deploy.cli:server_main", "Serve a robot over zmq for deploy."),
    ("bench", "latency"): (
        "ebt_policy.bench.cli:latency_main",
        "Per-chunk latency of EBT, Diffusion Policy (DDPM / DDIM) and MSE at one preset.",
    ),
    ("bench", "suite"): (
        "ebt_policy.bench.cli:suite_main",
        "Train and evaluate every policy on every task with the same demos and budget (resumable).",
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
    """Entry point of the `ebt-policy` console script; returns the exit status."""
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
            return _run(COMMANDS[words][0], argv[n:])
    prefix = tuple(w for w in argv[:1] if any(k[0] == w for k in COMMANDS))
    print(f"error: unknown command: {' '.join(argv[:2])}\n\n{_usage(prefix)}", file=sys.stderr)
    return 2


def parse_flags(cls: type[T], argv: list[str], prog: str) -> T:
    """``tyro.cli`` over the dataclass ``cls``, except that an error its ``__post_init__`` raises
    reaches :func:`main` (one line, exit 2) instead of tyro's usage box."""
    import tyro

    def command(args: Any) -> Any:
        return args

    # tyro leaves errors of a function's body alone, and names no prefix for a flattened field
    command.__annotations__ = {"args": Annotated[cls, tyro.conf.arg(name="")], "return": cls}
    command.__doc__ = cls.__doc__
    return tyro.cli(command, args=argv, prog=prog)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a multi-line message is joined with "; ")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _run(target: str, argv: list[str]) -> int:
    """Run the leaf command ``module:function`` on ``argv`` and map its outcome to an exit code."""
    from ebt_policy.errors import EbtPolicyError

    try:
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        ret = func(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return int(ret or 0)
    except EbtPolicyError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): nothing left to say; stop Python's flush at exit
        # from complaining about it too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the pipe
    except KeyboardInterrupt as exc:
        code = int(getattr(exc, "exit_code", 130))
        print("terminated" if code == 143 else "interrupted", file=sys.stderr)
        return code
    except Exception:
        traceback.print_exc()
        print(
            "error: this is a bug in ebt-policy, not in your input; please report it with the "
            "command line and the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
