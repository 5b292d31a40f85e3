"""ebt_policy.training: the training loop, its config and full training checkpoints.

``loop`` (train, train_step) reads top to bottom; beside it ``data`` (keys, stats, loaders, batch
order), ``optim`` (AdamW, LR schedule, EMA), ``resume`` (allowed changes, save/restore of the
training state), ``distributed`` (torchrun/DDP), ``metrics`` (metrics.jsonl, TensorBoard), ``stop``
(Ctrl-C, time budget) and ``checkpoint`` (the checkpoint directory and ``last``).

```python
from ebt_policy.training import TrainConfig, train
run_dir = train(TrainConfig(dataset="demos.zarr", out="runs/x", preset="tiny", steps=2000))
```
"""

from ebt_policy.training.config import TrainConfig
from ebt_policy.training.loop import train, train_step

__all__ = ["TrainConfig", "train", "train_step"]
