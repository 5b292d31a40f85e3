"""A Universal Robots arm through ``ur_rtde``, as a :class:`~ebt_policy.deploy.robot.Robot`.

Actions are our robosuite tasks' 7-D delta pose (``dx, dy, dz, drx, dry, drz, gripper`` in
[-1, 1]): when an action falls due, the goal becomes the *measured* TCP pose moved by
``position_scale * (dx, dy, dz)`` metres and rotated by the rotation vector ``rotation_scale *
(drx, dry, drz)`` (both in the world frame, rotation applied on the left, as robosuite's OSC
does), clipped into the workspace box; the gripper goes to closure ``(g + 1) / 2``. Each action
is applied once: when actions stop coming the arm settles at the last goal, it does not keep
moving. A servo thread at ``servo_hz`` kicks the RTDE watchdog, reads the state, moves the
set-point towards the goal at no more than ``max_speed`` / ``max_angular_speed`` and sends it
with ``servoL(pose, 0, 0, 1 / servo_hz, lookahead_time, gain)``.

Observations use the robosuite keys and units: ``robot0_eef_pos`` (m, world frame),
``robot0_eef_quat`` (xyzw, world frame, sign kept continuous), ``robot0_gripper_qpos`` (the two
finger positions, +-half the opening in m, like the Panda's) and ``robot0_joint_pos`` (the UR's
6 joints, rad; the Panda has 7). A protective stop, a refused set-point or a failing gripper
latches a fault: the arm is stopped (``servoStop``), observations say ``done`` and the next
episode needs the operator (``start_episode`` refuses while the protective stop holds).

Every exit stops the arm: ``stop()`` and ``disconnect()`` send ``servoStop``; a crash of the
servo thread does too; and if this process dies, the RTDE watchdog stops the arm after
``1 / watchdog_hz`` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from ebt_policy.deploy.robot import Observation, Robot, RobotSpec
from ebt_policy.deploy.robots.ur.config import URConfig
from ebt_policy.deploy.robots.ur.frames import BaseFrame, continuous_quat
from ebt_policy.deploy.robots.ur.gripper import Gripper, NoGripper
from ebt_policy.deploy.timing import Rate
from ebt_policy.errors import ConfigError, EbtPolicyError

__all__ = ["ACTION_NAMES", "OBS_KEYS", "URError", "URRobot", "fake_interfaces", "rtde_interfaces"]

log = logging.getLogger("ebt_policy.deploy.ur")

OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
Interfaces = Callable[[str, float], tuple[Any, Any]]  # (host, frequency) -> (control, receive)


class URError(EbtPolicyError, RuntimeError):
    """The arm cannot run (unreachable, protective stop, outside its workspace)."""


def rtde_interfaces(host: str, frequency: float) -> tuple[Any, Any]:
    """``ur_rtde``'s control and receive interfaces to the arm at ``host``."""
    try:
        import rtde_control
        import rtde_receive
    except ImportError:
        raise ConfigError(
            f"--robot ur-rtde://{host}: needs the ur_rtde package (pip install 'ebt-policy[ur]')"
        ) from None
    try:
        receive = rtde_receive.RTDEReceiveInterface(host, frequency)
        control = rtde_control.RTDEControlInterface(host, frequency)
    except RuntimeError as exc:
        raise URError(f"ur-rtde://{host}: cannot connect ({exc})") from None
    return control, receive


def fake_interfaces(host: str, frequency: float) -> tuple[Any, Any]:
    """The fake's look-alikes of ``ur_rtde``'s interfaces (tests, ``ur-fake://``)."""
    from ebt_policy.deploy.robots.ur.fake_rtde import (
        FakeRTDEControlInterface,
        FakeRTDEReceiveInterface,
    )

    return FakeRTDEControlInterface(host, frequency), FakeRTDEReceiveInterface(host, frequency)


class URRobot(Robot):
    """A UR arm at ``host`` (see the module docstring).

    Args:
        host: the controller's address (or the fake's name).
        config: validated settings (:func:`~ebt_policy.deploy.robots.ur.load_ur_config`).
        interfaces: builds ``(control, receive)`` (default: ``ur_rtde``'s).
        gripper: the gripper (default: none).
        name: the robot's name in its spec and recordings (default ``ur-rtde://HOST``).
    """

    def __init__(
        self,
        host: str,
        config: URConfig | None = None,
        interfaces: Interfaces = rtde_interfaces,
        gripper: Gripper | None = None,
        name: str | None = None,
    ) -> None:
        self.host = host
        self.config = cfg = config or URConfig()
        self.frame = BaseFrame(cfg.frame.base_position, cfg.frame.base_quat_xyzw)
        self.box_low = np.asarray(cfg.limits.workspace_min)
        self.box_high = np.asarray(cfg.limits.workspace_max)
        hz = cfg.robot.control_hz
        episode_s = cfg.robot.max_episode_s
        self.spec = RobotSpec(
            name=name or f"ur-rtde://{host}",
            action_dim=7,
            action_low=(-1.0,) * 7,
            action_high=(1.0,) * 7,
            control_hz=hz,
            obs_keys=OBS_KEYS,
            action_kind="delta",
            max_episode_steps=int(round(episode_s * hz)) if episode_s else None,
        )
        self.gripper = gripper or NoGripper()
        self._interfaces = interfaces
        self._ctl: Any = None
        self._rcv: Any = None
        self._lock = threading.Lock()  # the state below
        self._ctl_lock = threading.Lock()  # calls into the control interface
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending: list[tuple[float, np.ndarray]] = []
        self._goal: tuple[np.ndarray, Rotation] | None = None  # world frame
        self._setpoint: tuple[np.ndarray, Rotation] | None = None
        self._closure: float | None = None  # gripper target (None: leave it as it is)
        self._opening = 0.0  # last measured
        self._frame: Observation | None = None
        self._last_quat: np.ndarray | None = None
        self._stopped = True
        self._seq = 0
        self.fault: str | None = None
        self.clamped = 0  # goals clipped into the workspace
        self.ignored_sends = 0  # actions sent while stopped

    # ------------------------------------------------------------------ Robot
    def connect(self) -> None:
        if self._ctl is not None:
            return
        cfg = self.config.robot
        self._ctl, self._rcv = self._interfaces(self.host, cfg.servo_hz)
        try:
            self._ctl.setWatchdog(cfg.watchdog_hz)
            tcp = np.asarray(self._rcv.getActualTCPPose())
            if np.any(tcp[:3] < self.box_low) or np.any(tcp[:3] > self.box_high):
                raise URError(
                    f"{self.spec.name}: TCP at {np.round(tcp[:3], 3).tolist()} (base frame) is "
                    f"outside [limits] workspace {self.box_low.tolist()}..{self.box_high.tolist()} "
                    f"of {self.config.source}; jog it inside first"
                )
            self.gripper.connect()
            self._opening = self.gripper.opening()
            self._read_state()
            self._running.set()
            for target, name in ((self._servo_loop, "ur-servo"), (self._gripper_loop, "ur-grip")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.disconnect()
            raise

    def observation(self) -> Observation:
        with self._lock:
            if self._frame is None:
                raise RuntimeError(f"{self.spec.name}: observation() before connect()")
            return dict(self._frame)

    def send(self, action: np.ndarray, at_time: float | None = None) -> None:
        action = np.asarray(action, np.float64).reshape(self.spec.action_dim)
        with self._lock:
            if self._stopped or not np.all(np.isfinite(action)):
                self.ignored_sends += 1
                return
            due = time.monotonic() if at_time is None else float(at_time)
            self._pending.append((due, np.clip(action, -1.0, 1.0)))

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._pending.clear()
            self._goal = self._setpoint = None
        self._servo_stop()

    def disconnect(self) -> None:
        self._running.clear()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads.clear()
        if self._ctl is not None:
            self._servo_stop()
            for call in (self._ctl.stopScript, self._ctl.disconnect, self._rcv.disconnect):
                try:
                    call()
                except Exception:
                    log.exception("%s: %s failed while disconnecting", self.spec.name, call)
            self._ctl = self._rcv = None
        self.gripper.disconnect()

    def start_episode(self, seed: int | None = None) -> None:
        """Clear the stop latch: the operator has set the scene up. Refused while the arm is
        protective-stopped; restarts the control program after a watchdog stop."""
        if self._ctl is None:
            raise RuntimeError(f"{self.spec.name}: start_episode() before connect()")
        if self._rcv.isProtectiveStopped():
            raise URError(
                f"{self.spec.name}: the arm is protective-stopped; clear it on the "
                "teach pendant, then start again"
            )
        with self._ctl_lock:
            if not self._ctl.isProgramRunning():
                if not self._ctl.reuploadScript():
                    raise URError(f"{self.spec.name}: the control program did not restart")
                self._ctl.setWatchdog(self.config.robot.watchdog_hz)
        pos, rot = self.frame.ur_pose_to_world(self._rcv.getActualTCPPose())
        with self._lock:
            self.fault = None
            self._pending.clear()
            self._goal, self._setpoint = None, (pos, rot)
            self._stopped = False

    def dataset_metadata(self) -> dict[str, Any]:
        meta = super().dataset_metadata()
        a = self.config.action
        meta["action_space"].update(
            names=list(ACTION_NAMES),
            units=f"delta pose in the world frame: dx, dy, dz (1.0 = {a.position_scale} m), "
            f"rotation vector (1.0 = {a.rotation_scale} rad), gripper (-1 open, +1 close)",
        )
        meta["obs_keys"]["rgb"] = []
        cfg = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "source"}
        meta["ur"] = {"config": cfg, "quat_order": "xyzw", "frame": "world"}
        return meta

    # ------------------------------------------------------------------ internals
    def _servo_stop(self) -> None:
        with self._ctl_lock:
            if self._ctl is None:
                return
            try:
                self._ctl.servoStop(self.config.robot.stop_deceleration)
            except Exception:
                log.exception("%s: servoStop failed", self.spec.name)

    def _latch(self, why: str) -> None:
        """Fault (caller holds ``_lock``): stop taking actions; the servo thread stops the arm."""
        if self.fault is None:
            log.error("%s: %s; stopping the arm", self.spec.name, why)
            self.fault = why
        self._stopped = True
        self._pending.clear()
        self._goal = self._setpoint = None

    def _read_state(self) -> tuple[np.ndarray, Rotation, bool]:
        """Read the arm, publish a frame; (world position, rotation, protective stop)."""
        tcp = self._rcv.getActualTCPPose()
        q = np.asarray(self._rcv.getActualQ(), np.float32)
        pstop = bool(self._rcv.isProtectiveStopped())
        pos, rot = self.frame.ur_pose_to_world(tcp)
        with self._lock:
            quat = continuous_quat(rot.as_quat(), self._last_quat)
            self._last_quat = quat
            self._seq += 1
            half = self._opening / 2
            self._frame = {
                "robot0_eef_pos": pos.astype(np.float32),
                "robot0_eef_quat": quat.astype(np.float32),
                "robot0_gripper_qpos": np.array([half, -half], np.float32),
                "robot0_joint_pos": q,
                "timestamp": time.monotonic(),
                "seq": self._seq,
                "done": self.fault is not None,
            }
        return pos, rot, pstop

    def _servo_loop(self) -> None:
        cfg = self.config.robot
        rate = Rate(cfg.servo_hz)
        half = 0.5 / cfg.control_hz  # an action due within half a control period counts now
        try:
            while self._running.is_set():
                tick = rate.sleep()
                faulted = self.fault is not None
                with self._ctl_lock:
                    self._ctl.kickWatchdog()
                pos, rot, pstop = self._read_state()
                with self._lock:
                    if pstop:
                        self._latch("protective stop")
                    action = self._due(tick + half)
                    if action is not None and not self._stopped:
                        self._apply(action, pos, rot)
                    target = self._advance(rate.period)
                if target is not None:
                    with self._ctl_lock:
                        args = (0.0, 0.0, rate.period, cfg.lookahead_time, cfg.gain)
                        ok = self._ctl.servoL(target, *args)
                    if not ok:  # the program stopped: say why when the arm knows
                        pstop = bool(self._rcv.isProtectiveStopped())
                        why = "protective stop" if pstop else "servoL refused (program stopped)"
                        with self._lock:
                            self._latch(why)
                if self.fault is not None and not faulted:
                    self._servo_stop()  # once, when the fault latches
        except Exception as exc:
            with self._lock:
                self._latch(f"servo thread failed: {type(exc).__name__}: {exc}")
            self._servo_stop()
            log.exception("%s: servo thread failed", self.spec.name)

    def _gripper_loop(self) -> None:
        rate = Rate(self.config.robot.control_hz)
        try:
            while self._running.is_set():
                rate.sleep()
                if self._closure is not None:
                    self.gripper.command(self._closure)
                opening = self.gripper.opening()
                with self._lock:
                    self._opening = opening
        except Exception as exc:
            with self._lock:
                self._latch(f"gripper failed: {exc}")
            self._servo_stop()

    def _due(self, now: float) -> np.ndarray | None:
        """The newest pending action due by ``now`` (older due ones are superseded)."""
        due = [i for i, (t, _) in enumerate(self._pending) if t <= now]
        if not due:
            return None
        action = self._pending[due[-1]][1]
        del self._pending[: due[-1] + 1]
        return action

    def _apply(self, action: np.ndarray, pos: np.ndarray, rot: Rotation) -> None:
        """New goal from the measured pose (world frame) and a delta action."""
        a = self.config.action
        goal_pos = pos + a.position_scale * action[:3]
        goal_rot = Rotation.from_rotvec(a.rotation_scale * action[3:6]) * rot
        base_pos, base_rot = self.frame.to_base(goal_pos, goal_rot)
        clipped = np.clip(base_pos, self.box_low, self.box_high)
        if not np.array_equal(clipped, base_pos):
            self.clamped += 1
            goal_pos, goal_rot = self.frame.to_world(clipped, base_rot)
        self._goal = (goal_pos, goal_rot)
        if self._setpoint is None:
            self._setpoint = (pos, rot)
        self._closure = float(action[6] + 1.0) / 2.0

    def _advance(self, dt: float) -> list[float] | None:
        """Move the set-point towards the goal within the speed limits; the UR pose to send."""
        if self._stopped or self._goal is None or self._setpoint is None:
            return None
        lim = self.config.limits
        (sp_pos, sp_rot), (goal_pos, goal_rot) = self._setpoint, self._goal
        step = goal_pos - sp_pos
        dist, most = float(np.linalg.norm(step)), lim.max_speed * dt
        if dist > most:
            step *= most / dist
        turn = (goal_rot * sp_rot.inv()).as_rotvec()
        angle, most = float(np.linalg.norm(turn)), lim.max_angular_speed * dt
        if angle > most:
            turn *= most / angle
        self._setpoint = (sp_pos + step, Rotation.from_rotvec(turn) * sp_rot)
        return self.frame.world_to_ur_pose(*self._setpoint)
