"""The built-in tasks, one folder per family: ``robosuite`` (lift, can, square, stack), ``pusht``
and ``twogoal``. Each folder holds ``spec.py`` (the task's facts, declared once: keys, action space,
control rate, episode cap), ``env.py`` (the gymnasium env) and ``expert.py`` (its scripted expert).

Only the specs are imported here; an env or expert module (and its simulator) is imported when a
task's env or expert is first built.
"""

from ebt_policy.envs.tasks.pusht.spec import SPECS as _PUSHT
from ebt_policy.envs.tasks.robosuite.spec import SPECS as _ROBOSUITE
from ebt_policy.envs.tasks.twogoal.spec import SPECS as _TWOGOAL

BUILTIN_SPECS = (*_ROBOSUITE, *_PUSHT, *_TWOGOAL)  # registration order of the baseline registry

__all__ = ["BUILTIN_SPECS"]
