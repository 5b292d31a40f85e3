"""`ebt-policy train`: train a policy on an episode store.

Usage::

    ebt-policy train --dataset demos.zarr --out runs/lift [--policy ebt]
        [--preset tiny|small|paper|mlp] [--steps N] [--minutes M] [--batch-size B] [--seed S]
        [--resume] [--device cpu|cuda|auto] [--amp] [--lr LR] [--warmup-steps W] ...
        [--policy-cfg.FIELD VALUE ...]

Every TrainConfig field is a flag (``--help`` lists them). Policy config fields are overridden with
``--policy-cfg.FIELD`` (e.g. ``--policy-cfg.d-model 128``); their defaults shown in ``--help`` are
those of the chosen ``--policy`` and ``--preset``, so put those two first if you read the help.

Multi-process: run the same command under torchrun, e.g.
``torchrun --standalone --nproc_per_node 2 -m ebt_policy.cli train --dataset ... --out ...``;
``--batch-size`` stays the global batch (split evenly over the processes).
"""

# No `from __future__ import annotations` here: tyro reads the annotations of `command` below,
# which name a class chosen at run time.
import dataclasses
from typing import Annotated, Any

from ebt_policy.training.config import TrainConfig


def _prescan(argv: list[str], flag: str, default: str) -> str:
    """Value of ``--flag X`` or ``--flag=X`` in argv (needed before tyro builds the parser)."""
    value = default
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _overrides(cfg: Any, default: Any) -> dict[str, Any]:
    """Fields of ``cfg`` that differ from ``default``; a nested config gives a dict of its own."""
    out = {}
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if value != base:
            out[f.name] = _overrides(value, base) if dataclasses.is_dataclass(value) else value
    return out


def main(argv: list[str]) -> int:
    """Parse the flags and run :func:`ebt_policy.training.train`."""
    import tyro

    from ebt_policy.errors import ConfigError
    from ebt_policy.policies import make_policy_config
    from ebt_policy.training.loop import train
    from ebt_policy.utils.paths import check_output_path

    policy_name = _prescan(argv, "--policy", "ebt")
    preset = _prescan(argv, "--preset", "tiny")
    try:
        default_policy_cfg = make_policy_config(policy_name, preset=preset)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--policy {policy_name!r} --preset {preset!r}: {exc}") from None
    policy_cfg_type = type(default_policy_cfg)

    def command(
        train_cfg: Annotated[TrainConfig, tyro.conf.arg(name="")],
        policy_cfg: policy_cfg_type = default_policy_cfg,  # type: ignore[valid-type]
    ) -> TrainConfig:
        return dataclasses.replace(
            train_cfg,
            policy_overrides={
                **train_cfg.policy_overrides,
                **_overrides(policy_cfg, default_policy_cfg),
            },
        )

    cfg = tyro.cli(command, args=argv, prog="ebt-policy train", description=__doc__)
    check_output_path(cfg.out, "dir", "--out")  # before the store is read and the model built
    train(cfg)
    return 0
