"""robosuite 1.5 tasks (Lift, PickPlaceCan, NutAssemblySquare, Stack) as gymnasium envs.

Panda with robosuite's default composite controller (OSC delta pose), 7-D action in [-1, 1]:
dx, dy, dz (1.0 = 5 cm), axis-angle rotation delta (1.0 = 0.5 rad), gripper (-1 open, +1 close),
at 20 Hz. Low-dim observations by default; ``images=True`` adds the ``agentview`` and
``robot0_eye_in_hand`` cameras as ``agentview_image`` / ``robot0_eye_in_hand_image`` (uint8 HWC,
upright).

Resets use ``hard_reset=False``: the sim is kept and only its state is reset (1-3 ms instead of
0.5-0.7 s to rebuild the model); object placement is still randomised from the env's RNG, which
``reset(seed=...)`` reseeds in place so the same seed gives the same episode.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["CAMERAS", "ROBOSUITE_TASKS", "RobosuiteEnv", "make_robosuite_env"]

CAMERAS = ("agentview", "robot0_eye_in_hand")
CONTROL_HZ = 20.0

# Proprioceptive keys taken as they are from robosuite, plus "object" (robosuite's "object-state",
# named as in robomimic).
ROBOT_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos")


def _lift_extra(env: Any) -> dict[str, np.ndarray]:
    return {}


def _can_extra(env: Any) -> dict[str, np.ndarray]:
    # Centre of the can's target bin quarter: PickPlace's success check wants the can inside it.
    return {"target_pos": np.asarray(env.target_bin_placements[env.object_id])}


def _square_extra(env: Any) -> dict[str, np.ndarray]:
    # Square nut goes on peg1 (NutAssembly.on_peg uses peg1 for the square nut).
    return {"peg_pos": np.array(env.sim.data.body_xpos[env.peg1_body_id])}


def _stack_extra(env: Any) -> dict[str, np.ndarray]:
    return {}


# task -> (robosuite env name, privileged keys from robosuite obs, extra keys computed from the env)
ROBOSUITE_TASKS: dict[str, tuple[str, tuple[str, ...], Callable[[Any], dict[str, np.ndarray]]]] = {
    "lift": ("Lift", ("cube_pos", "cube_quat"), _lift_extra),
    "can": ("PickPlaceCan", ("Can_pos", "Can_quat"), _can_extra),
    "square": ("NutAssemblySquare", ("SquareNut_pos", "SquareNut_quat"), _square_extra),
    "stack": ("Stack", ("cubeA_pos", "cubeA_quat", "cubeB_pos", "cubeB_quat"), _stack_extra),
}


def _quiet_robosuite_import() -> Any:
    # robosuite logs several WARNINGs at import about optional extras we do not use (private macro
    # file, robosuite_models, mink IK for humanoids). Keep real warnings from later calls.
    logger = logging.getLogger("robosuite_logs")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import robosuite
        from robosuite import macros
    finally:
        logger.setLevel(level)
    return robosuite, macros


class RobosuiteEnv(gym.Env):
    """One robosuite manipulation task behind the gymnasium API (see the module docstring).

    Observations (float32): ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw),
    ``robot0_gripper_qpos`` (2), ``robot0_joint_pos`` (7), ``object`` (task's object-state) and the
    task's privileged keys (object poses, target positions) that the scripted experts read.
    ``info["success"]`` is robosuite's own success check. Reward is 1 on success, else 0.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str,
        images: bool = False,
        render_size: int = 84,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        model_seed: int = 0,
    ) -> None:
        if task not in ROBOSUITE_TASKS:
            raise ValueError(f"unknown robosuite task {task!r}; known: {sorted(ROBOSUITE_TASKS)}")
        robosuite, macros = _quiet_robosuite_import()
        self.task = task
        self.images = bool(images)
        self.render_size = int(render_size)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        env_name, self._privileged, self._extra = ROBOSUITE_TASKS[task]
        offscreen = self.images or render_mode == "rgb_array"
        self._env = robosuite.make(
            env_name,
            robots="Panda",
            has_renderer=False,
            has_offscreen_renderer=offscreen,
            use_camera_obs=self.images,
            use_object_obs=True,
            camera_names=list(CAMERAS),
            camera_heights=self.render_size,
            camera_widths=self.render_size,
            reward_shaping=False,
            control_freq=int(CONTROL_HZ),
            ignore_done=True,  # the TimeLimit wrapper truncates at the task's horizon
            hard_reset=False,
            # Model building draws random sizes (Lift's cube) from the env's RNG; a fixed seed
            # makes every instance (collector, eval workers) the same model.
            seed=int(model_seed),
        )
        # robosuite renders upside down under its default OpenGL image convention.
        self._flip = macros.IMAGE_CONVENTION == "opengl"
        self._mujoco = __import__("mujoco")
        raw = self._env.reset()
        self._configure_renderer()
        example = self._convert(raw)
        obs_spaces: dict[str, spaces.Space] = {}
        for key, value in example.items():
            if value.dtype == np.uint8:
                obs_spaces[key] = spaces.Box(0, 255, value.shape, np.uint8)
            else:
                obs_spaces[key] = spaces.Box(-np.inf, np.inf, value.shape, np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = self._env.action_spec
        self.action_space = spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )

    @property
    def robosuite_env(self) -> Any:
        """The underlying robosuite env."""
        return self._env

    @property
    def mujoco_data(self) -> Any:
        """The raw mujoco.MjData (tests read its warning counters)."""
        return self._env.sim.data._data

    def _configure_renderer(self) -> None:
        # Software (llvmpipe) rendering cost is dominated by shadows and reflections: turning them
        # off halves agentview's cost (sim-notes.md). The context survives soft resets.
        ctx = self._env.sim._render_context_offscreen if self._env.sim is not None else None
        if ctx is not None:
            ctx.scn.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            ctx.scn.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {key: np.asarray(raw[key], dtype=np.float32) for key in ROBOT_KEYS}
        obs["object"] = np.asarray(raw["object-state"], dtype=np.float32)
        for key in self._privileged:
            obs[key] = np.asarray(raw[key], dtype=np.float32)
        for key, value in self._extra(self._env).items():
            obs[key] = np.asarray(value, dtype=np.float32)
        if self.images:
            for cam in CAMERAS:
                img = raw[f"{cam}_image"]
                obs[f"{cam}_image"] = np.ascontiguousarray(img[::-1] if self._flip else img)
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # Placement samplers and the robot's init noise hold references to env.rng: reseed it
            # in place rather than replacing the object.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._configure_renderer()
        return self._convert(raw), {"success": False}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: action must be finite, got {action}")
        raw, _, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        success = bool(self._env._check_success())
        terminated = success and self.terminate_on_success
        return self._convert(raw), float(success), terminated, False, {"success": success}

    def render(self) -> np.ndarray | None:
        """The agentview camera at render_size (needs render_mode="rgb_array" or images=True)."""
        if self.render_mode != "rgb_array" and not self.images:
            return None
        img = self._env.sim.render(
            camera_name="agentview", width=self.render_size, height=self.render_size
        )
        return np.ascontiguousarray(img[::-1] if self._flip else img)

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None


def make_robosuite_env(
    task: str,
    images: bool = False,
    render_size: int = 84,
    terminate_on_success: bool = True,
    horizon: int | None = None,
    render_mode: str | None = None,
    model_seed: int = 0,
) -> gym.Env:
    """A robosuite task env wrapped in a TimeLimit at ``horizon`` (default: the task's).

    ``model_seed`` seeds what robosuite randomises when it builds the model (object sizes); the
    same value gives the same model in every process.
    """
    from ebt_policy.envs.registry import get_task

    env = RobosuiteEnv(task, images, render_size, terminate_on_success, render_mode, model_seed)
    return gym.wrappers.TimeLimit(env, max_episode_steps=horizon or get_task(task).horizon)


# One factory per task for the registry; partials keep make_robosuite_env's signature (minus task),
# which make_env_from_metadata checks metadata kwargs against.
make_lift_env = functools.partial(make_robosuite_env, "lift")
make_can_env = functools.partial(make_robosuite_env, "can")
make_square_env = functools.partial(make_robosuite_env, "square")
make_stack_env = functools.partial(make_robosuite_env, "stack")
