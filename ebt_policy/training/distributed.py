"""Multi-process training under ``torchrun``: the process group, DDP wrapping, sharded sampling.

One process per device. ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` come from torchrun; without them
(or with ``WORLD_SIZE=1``) everything here is a no-op and training runs in this process alone.
The process group uses gloo on CPU and nccl on CUDA. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler


@dataclasses.dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Rank and world size from torchrun's environment (a single process without it)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=world_size,
        )


@contextlib.contextmanager
def process_group(dist_info: DistInfo, device: torch.device) -> Iterator[DistInfo]:
    """Bind this process to its GPU, join the process group for the block, then leave it.

    A group that already exists (a caller's) is used and left alone.
    """
    if device.type == "cuda":  # before init, so NCCL binds this process to its own GPU
        torch.cuda.set_device(device)
    if dist_info.enabled:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            dist_info.owns_group = True
    try:
        yield dist_info
    finally:
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """Routes ``forward`` to ``policy.compute_loss`` so DistributedDataParallel sees the call.

    DDP prepares its gradient all-reduce inside ``forward``; calling ``compute_loss`` on the
    wrapped policy directly would bypass it.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.policy.compute_loss(batch)


def wrap_for_training(
    policy: torch.nn.Module,
    dist_info: DistInfo,
    device: torch.device,
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """``LossModule(policy)``, in DistributedDataParallel when several processes train."""
    loss_model: torch.nn.Module = LossModule(policy)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        loss_model = DistributedDataParallel(
            loss_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    return loss_model


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose iteration can start part-way through an epoch.

    The permutation of epoch ``e`` is ``torch.randperm`` seeded with ``seed + e`` (the parent's
    rule), the same in every process; ``start_index`` skips the samples already consumed.
    """

    start_index: int = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def any_rank(flag: bool, dist_info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true in any process (all ranks must stop at the same step)."""
    if not dist_info.enabled:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_to_all(value: Any, dist_info: DistInfo) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` in a single process)."""
    if not dist_info.enabled:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(values, value)
    return values
