"""Recording demonstrations by teleoperation (`ebt-policy record`): teleop devices
(:mod:`~ebt_policy.record.teleop`), the recorder (:mod:`~ebt_policy.record.session`) and a
simulated task stepped in lockstep with it (:mod:`~ebt_policy.record.lockstep`).

Nothing here imports training code; the episode store is reached through its public API.
"""

from ebt_policy.record.session import RecordSummary, record
from ebt_policy.record.teleop import Command, KeyboardTeleop, ReplayTeleop, Teleop

__all__ = ["Command", "KeyboardTeleop", "RecordSummary", "ReplayTeleop", "Teleop", "record"]
