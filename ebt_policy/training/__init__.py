"""ebt_policy.training: the training loop, its config and full training checkpoints.

```python
from ebt_policy.training import TrainConfig, train
run_dir = train(TrainConfig(dataset="demos.zarr", out="runs/x", preset="tiny", steps=2000))
```
"""

from ebt_policy.training.config import TrainConfig
from ebt_policy.training.loop import train, train_step

__all__ = ["TrainConfig", "train", "train_step"]
