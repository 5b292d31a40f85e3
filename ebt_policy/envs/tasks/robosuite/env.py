"""robosuite 1.5 tasks (Lift, PickPlaceCan, NutAssemblySquare, Stack) as gymnasium envs.

Panda with robosuite's default composite controller (OSC delta pose), 7-D action in [-1, 1]:
dx, dy, dz (1.0 = 5 cm), axis-angle rotation delta (1.0 = 0.5 rad), gripper (-1 open, +1 close),
at 20 Hz. Low-dim observations by default; ``images=True`` adds the ``agentview`` and
``robot0_eye_in_hand`` cameras as ``agentview_image`` / ``robot0_eye_in_hand_image`` (uint8 HWC,
upright).

Resets use ``hard_reset=False``: the sim is kept and only its state is reset (1-3 ms instead of
0.5-0.7 s to rebuild the model); object placement is still randomised from the env's RNG, which
``reset(seed=...)`` reseeds in place so the same seed gives the same episode.

The robosuite env is built on the first reset (construction ~1 s), so building the gymnasium env
is cheap. Rendering uses EGL: a process forked after its parent made any EGL context (any env
with images that was reset, robosuite or not) hangs when it renders, so vector envs with cameras
need ``AsyncVectorEnv(..., context="spawn")`` or ``"forkserver"``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ebt_policy.envs.tasks.robosuite.spec import (
    CAMERAS,
    CONTROL_HZ,
    MAX_EPISODE_STEPS,
    ROBOSUITE_TASKS,
    ROBOT_DIMS,
    SPECS,
)

__all__ = ["CAMERAS", "ROBOSUITE_TASKS", "RobosuiteEnv", "make_robosuite_env"]

ROBOT_KEYS = tuple(ROBOT_DIMS)
_SPECS = {spec.name: spec for spec in SPECS}


def _can_extra(env: Any) -> dict[str, np.ndarray]:
    # Centre of the can's target bin quarter: PickPlace's success check wants the can inside it.
    return {"target_pos": np.asarray(env.target_bin_placements[env.object_id])}


def _square_extra(env: Any) -> dict[str, np.ndarray]:
    # Square nut goes on peg1 (NutAssembly.on_peg uses peg1 for the square nut).
    return {"peg_pos": np.array(env.sim.data.body_xpos[env.peg1_body_id])}


def _no_extra(env: Any) -> dict[str, np.ndarray]:
    return {}


# task -> the keys computed from the env (their sizes are in spec.py's extra_keys)
_EXTRA: dict[str, Callable[[Any], dict[str, np.ndarray]]] = {
    "can": _can_extra,
    "square": _square_extra,
}


def _quiet_robosuite_import() -> Any:
    # robosuite logs several WARNINGs at import about optional extras we do not use (private macro
    # file, robosuite_models, mink IK for humanoids). Keep real warnings from later calls.
    # robosuite sets its logger's level while importing, so a level set here would be overridden;
    # a filter on the logger survives that.
    logger = logging.getLogger("robosuite_logs")

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(errors_only)
    try:
        import robosuite
        from robosuite import macros
    finally:
        logger.removeFilter(errors_only)
    # robosuite's logger is at INFO and reports every controller load; warnings are what matter.
    logger.setLevel(max(logger.level, logging.WARNING))
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
        self.task = task
        self.images = bool(images)
        self.render_size = int(render_size)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self.model_seed = int(model_seed)
        info = ROBOSUITE_TASKS[task]
        self._privileged = info.object_keys
        self._extra = _EXTRA.get(task, _no_extra)
        # The robosuite env (and its EGL render context) is built on first use, not here:
        # gymnasium's AsyncVectorEnv builds one env in the parent before forking its workers, and
        # a child forked after the parent made an EGL context hangs when it makes its own.
        self._env: Any = None
        box = functools.partial(spaces.Box, -np.inf, np.inf, dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {k: box((n,)) for k, n in ROBOT_DIMS.items()}
        obs_spaces["object"] = box((info.object_dim,))
        for key in self._privileged:
            obs_spaces[key] = box((4,) if key.endswith("_quat") else (3,))
        for key, n in info.extra_keys:
            obs_spaces[key] = box((n,))
        if self.images:
            shape = (self.render_size, self.render_size, 3)
            for cam in CAMERAS:
                obs_spaces[f"{cam}_image"] = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = _SPECS[task].action_bounds()
        self.action_space = spaces.Box(low, high, dtype=np.float32)

    def _build(self) -> Any:
        """The robosuite env, built on first call."""
        if self._env is not None:
            return self._env
        robosuite, macros = _quiet_robosuite_import()
        import mujoco

        self._mujoco = mujoco
        # robosuite renders upside down under its default OpenGL image convention.
        self._flip = macros.IMAGE_CONVENTION == "opengl"
        offscreen = self.images or self.render_mode == "rgb_array"
        self._env = robosuite.make(
            ROBOSUITE_TASKS[self.task].env_name,
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
            ignore_done=True,  # the TimeLimit wrapper truncates at the task's episode cap
            hard_reset=False,
            # Model building draws random sizes (Lift's cube) from the env's RNG; a fixed seed
            # makes every instance (collector, eval workers) the same model.
            seed=self.model_seed,
        )
        low, high = self._env.action_spec
        if low.shape != (7,) or not (np.all(low == -1) and np.all(high == 1)):
            raise RuntimeError(f"{self.task}: unexpected robosuite action spec {low}, {high}")
        return self._env

    @property
    def robosuite_env(self) -> Any:
        """The underlying robosuite env (built on first access)."""
        return self._build()

    @property
    def mujoco_data(self) -> Any:
        """The raw mujoco.MjData (tests read its warning counters)."""
        return self._build().sim.data._data

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
        self._build()
        if seed is not None:
            # Placement samplers and the robot's init noise hold references to env.rng: reseed it
            # in place rather than replacing the object.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._configure_renderer()
        return self._convert(raw), {"success": False}

    def step(self, action: np.ndarray):
        if self._env is None:
            raise RuntimeError(f"{self.task}: call reset() before step()")
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
        img = self._build().sim.render(
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
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    model_seed: int = 0,
) -> gym.Env:
    """A robosuite task env wrapped in a TimeLimit at ``max_episode_steps`` (default: the task's).

    ``model_seed`` seeds what robosuite randomises when it builds the model (object sizes); the
    same value gives the same model in every process.
    """
    env = RobosuiteEnv(task, images, render_size, terminate_on_success, render_mode, model_seed)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps or MAX_EPISODE_STEPS)


# One factory per task for the registry; partials keep make_robosuite_env's signature (minus task),
# which make_env_from_metadata checks metadata kwargs against.
make_lift_env = functools.partial(make_robosuite_env, "lift")
make_can_env = functools.partial(make_robosuite_env, "can")
make_square_env = functools.partial(make_robosuite_env, "square")
make_stack_env = functools.partial(make_robosuite_env, "stack")
