"""Simulated tasks (robosuite, gym-pusht, our own `twogoal`), their registry and scripted experts.

One folder per task family under ``envs/tasks/`` (spec, env, expert); ``registry`` builds them by
name, ``collect`` records expert demonstrations, ``runner`` evaluates a policy.

```python
from ebt_policy.envs import get_task, make_env, make_expert
spec = get_task("lift")
env = make_env("lift", images=False)
expert = make_expert("lift", seed=0)  # or spec.make_expert(0)
```
"""

from ebt_policy.envs.registry import (
    Expert,
    TaskSpec,
    get_task,
    list_tasks,
    make_env,
    make_env_from_metadata,
    make_expert,
    register_task,
)

__all__ = [
    "Expert",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "make_env",
    "make_env_from_metadata",
    "make_expert",
    "register_task",
]
