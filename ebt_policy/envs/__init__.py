"""Simulated tasks (robosuite, gym-pusht, our own `twogoal`), their registry and scripted experts.

```python
from ebt_policy.envs import get_task, make_env
spec = get_task("lift")
env = make_env("lift", images=False)
expert = spec.make_expert(seed=0)
```
"""

from ebt_policy.envs.registry import (
    Expert,
    TaskSpec,
    get_task,
    list_tasks,
    make_env,
    make_env_from_metadata,
    register_task,
)

__all__ = [
    "Expert",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "make_env",
    "make_env_from_metadata",
    "register_task",
]
