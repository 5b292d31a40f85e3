"""The robosuite tasks' facts, declared once: the env (``env.py``) and the registry read them here.

Episode cap: 400 steps (20 s) for every robosuite task, as robomimic's and Diffusion Policy's
evaluations of Lift/Can/Square use. Our experts finish in ~50 (lift) to ~170 (square) steps, so a
policy has >2x the expert's time, while failed rollouts stay cheap to evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebt_policy.envs.spec import TaskSpec

__all__ = ["CAMERAS", "CONTROL_HZ", "ROBOSUITE_TASKS", "ROBOT_DIMS", "SPECS", "RobosuiteTask"]

CONTROL_HZ = 20.0
MAX_EPISODE_STEPS = 400
CAMERAS = ("agentview", "robot0_eye_in_hand")
# Proprioceptive keys taken as they are from robosuite, with their sizes.
ROBOT_DIMS = {
    "robot0_eef_pos": 3,
    "robot0_eef_quat": 4,
    "robot0_gripper_qpos": 2,
    "robot0_joint_pos": 7,
}
# What a policy sees by default; "object" is robosuite's "object-state", named as in robomimic.
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
ACTION_UNITS = (
    "OSC delta pose: dx, dy, dz (1.0 = 5 cm), axis-angle rotation delta (1.0 = 0.5 rad), "
    "gripper (-1 open, +1 close)"
)


@dataclass(frozen=True)
class RobosuiteTask:
    """One robosuite task: which robosuite env, and the privileged keys its expert reads."""

    name: str
    env_name: str  # robosuite's name of the env
    object_keys: tuple[str, ...]  # object poses taken from robosuite's observations
    extra_keys: tuple[tuple[str, int], ...]  # (key, size) computed from the env (env.py)
    object_dim: int  # size of robosuite's object-state
    success: str
    doc: str

    def spec(self) -> TaskSpec:
        """The registry's spec of this task."""
        return TaskSpec(
            name=self.name,
            description=f"robosuite {self.env_name}, Panda, {self.doc}",
            env_factory=f"ebt_policy.envs.tasks.robosuite.env:make_{self.name}_env",
            expert_factory=f"ebt_policy.envs.tasks.robosuite.expert:make_{self.name}_expert",
            low_dim_keys=LOW_DIM_KEYS,
            rgb_keys=tuple(f"{cam}_image" for cam in CAMERAS),
            privileged_keys=(
                "robot0_joint_pos",
                *self.object_keys,
                *(key for key, _ in self.extra_keys),
            ),
            action_dim=7,
            action_low=(-1.0,) * 7,
            action_high=(1.0,) * 7,
            action_names=ACTION_NAMES,
            action_kind="delta",
            action_units=ACTION_UNITS,
            control_hz=CONTROL_HZ,
            max_episode_steps=MAX_EPISODE_STEPS,
            success=self.success,
        )


ROBOSUITE_TASKS: dict[str, RobosuiteTask] = {
    task.name: task
    for task in (
        RobosuiteTask(
            "lift",
            "Lift",
            ("cube_pos", "cube_quat"),
            (),
            10,
            "cube lifted more than 4 cm above the table",
            "lift the cube",
        ),
        RobosuiteTask(
            "can",
            "PickPlaceCan",
            ("Can_pos", "Can_quat"),
            (("target_pos", 3),),
            14,
            "can inside its target bin quarter and the gripper away from it",
            "move the can into its bin",
        ),
        RobosuiteTask(
            "square",
            "NutAssemblySquare",
            ("SquareNut_pos", "SquareNut_quat"),
            (("peg_pos", 3),),
            14,
            "square nut around the square peg, resting low",
            "put the square nut on its peg",
        ),
        RobosuiteTask(
            "stack",
            "Stack",
            ("cubeA_pos", "cubeA_quat", "cubeB_pos", "cubeB_quat"),
            (),
            23,
            "cube A resting on cube B and not grasped",
            "stack cube A on cube B",
        ),
    )
}

SPECS = tuple(task.spec() for task in ROBOSUITE_TASKS.values())
