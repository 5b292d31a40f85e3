"""Receding-horizon execution shared by simulation and the robot: observations in, actions out.

```python
executor = RolloutExecutor(policy, n_rows=1)
executor.start_episode(0, obs, seed=0)
while running:
    action = executor.act()[0]  # plans a chunk when row 0's queue is empty
    obs = robot.step(action)
    executor.observe(0, obs)
```

Imports only numpy and the policy interface (no envs, datasets, training or simulators).
"""

from ebt_policy.rollout.executor import ChunkRecord, Plan, RolloutExecutor

__all__ = ["ChunkRecord", "Plan", "RolloutExecutor"]
