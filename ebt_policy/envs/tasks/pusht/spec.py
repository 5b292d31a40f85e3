"""The `pusht` task's facts, declared once (the env and the registry read them here)."""

from __future__ import annotations

from ebt_policy.envs.spec import TaskSpec

PUSHT = TaskSpec(
    name="pusht",
    description="gym-pusht: push the T block onto the target pose with a circular agent",
    env_factory="ebt_policy.envs.tasks.pusht.env:make_pusht_env",
    expert_factory="ebt_policy.envs.tasks.pusht.expert:make_pusht_expert",
    low_dim_keys=("agent_pos", "block_keypoints"),
    rgb_keys=("overhead_image",),
    privileged_keys=("block_pose",),
    action_dim=2,
    action_low=(0.0, 0.0),
    action_high=(512.0, 512.0),
    action_names=("x", "y"),
    action_kind="absolute",
    action_units="target position of the agent in pixels of the 512x512 workspace",
    control_hz=10.0,
    max_episode_steps=300,
    success="target-area coverage >= 0.95 (score: max coverage over the episode)",
)

SPECS = (PUSHT,)
