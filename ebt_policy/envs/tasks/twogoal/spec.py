"""The `twogoal` task's facts, declared once (the env and the registry read them here)."""

from __future__ import annotations

from ebt_policy.envs.spec import TaskSpec

TWOGOAL = TaskSpec(
    name="twogoal",
    description=(
        "point mass reaching either of two symmetric goals around an obstacle; demonstrations "
        "pick a side at random (multimodal)"
    ),
    env_factory="ebt_policy.envs.tasks.twogoal.env:make_twogoal_env",
    expert_factory="ebt_policy.envs.tasks.twogoal.expert:make_twogoal_expert",
    low_dim_keys=("agent_pos", "agent_vel"),
    rgb_keys=("overhead_image",),
    privileged_keys=(),
    action_dim=2,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    action_names=("vx", "vy"),
    action_kind="delta",
    action_units="commanded velocity, 1.0 = 0.3 m/s (1.5 cm per 50 ms step)",
    control_hz=20.0,
    max_episode_steps=120,  # the expert needs 45-90 steps
    success="agent centre within 3 cm of either goal",
)

SPECS = (TWOGOAL,)
