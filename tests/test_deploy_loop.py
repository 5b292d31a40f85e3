"""The real-time control loop against the simulated twogoal robot, with faults injected through a
scripted policy (delays, NaN, exceptions, stalls) and through the robot (frozen stream)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ebt_policy.deploy.energy import EnergyConfig
from ebt_policy.deploy.loop import DeployLoop, LoopConfig
from ebt_policy.deploy.robots.sim import SimRobot
from ebt_policy.deploy.safety import SafetyConfig
from ebt_policy.envs import make_expert
from ebt_policy.errors import ConfigError
from ebt_policy.policies.base import ChunkPrediction

HZ = 50.0  # the robot and loop rate in these tests (twogoal physics per step, 2.5x real time)
TA = 4
CHUNK_S = TA / HZ  # 80 ms


class ScriptedPolicy:
    """To=2, Ta=4. Plays the twogoal expert on the newest frame (or a constant action), with
    per-call faults: ``delay_s``, and call indices that return NaN, raise, stall or go huge."""

    name = "scripted"
    n_obs_steps = 2
    n_action_steps = TA
    horizon = 8

    def __init__(
        self,
        delay_s=0.0,
        nan=(),
        raise_on=(),
        stall_on=(),
        huge=(),
        expert=True,
        energies=None,
        spreads=None,
    ):
        self.energies, self.spreads = energies, spreads
        self.delay_s, self.nan, self.raise_on = delay_s, set(nan), set(raise_on)
        self.stall_on, self.huge, self.use_expert = set(stall_on), set(huge), expert
        self.calls = 0
        self.windows: list[dict[str, np.ndarray]] = []
        self.expert = None

    def reset(self) -> None:
        self.expert = None

    def start_episode(self, row: int, seed: int | None) -> None:
        self.expert = make_expert("twogoal", seed or 0)
        self.expert.reset()

    def predict_chunk(self, obs_window, rows=None) -> ChunkPrediction:
        i, self.calls = self.calls, self.calls + 1
        self.windows.append(obs_window)
        time.sleep(self.delay_s)
        if i in self.stall_on:
            time.sleep(3600)
        if i in self.raise_on:
            raise RuntimeError("policy blew up")
        if self.use_expert:
            newest = {k: v[0, -1] for k, v in obs_window.items()}
            a = np.asarray(self.expert.act(newest), np.float32)
        else:
            a = np.array([0.2, 0.0], np.float32)
        actions = np.tile(a, (1, TA, 1))  # (B=1, Ta, Da)
        if i in self.nan:
            actions[0, 1, 0] = np.nan
        if i in self.huge:
            actions[:] = 1e6
        energy = self.energies[min(i, len(self.energies) - 1)] if self.energies else 0.5 + i
        spread = None
        if self.spreads:  # a best-of-K planner's candidates' disagreement
            spread = np.array([self.spreads[min(i, len(self.spreads) - 1)]])
        return ChunkPrediction(
            actions=actions,
            chunk=actions,
            energy=np.array([energy]),
            steps=np.array([2]),
            spread=spread,
        )


class SpyRobot(SimRobot):
    """SimRobot that records what it was sent and when it was told to stop."""

    def __init__(self, **kw) -> None:
        super().__init__("twogoal", control_hz=HZ, **kw)
        self.sent: list[tuple[np.ndarray, float | None]] = []
        self.sent_wall: list[float] = []  # when each was sent
        self.stops = 0
        self.sent_at_stop: list[int] = []  # how many actions had been sent at each stop()
        self.freeze_after: int | None = None
        self._frozen = None
        self._reads = 0

    def send(self, action, at_time=None) -> None:
        self.sent_wall.append(time.monotonic())
        self.sent.append((np.array(action), at_time))
        super().send(action, at_time)

    def stop(self) -> None:
        self.stops += 1
        self.sent_at_stop.append(len(self.sent))
        super().stop()

    def observation(self):
        self._reads += 1
        if self.freeze_after is not None and self._reads > self.freeze_after:
            self._frozen = self._frozen or super().observation()
            return dict(self._frozen)
        return super().observation()


def _run(policy, robot=None, **cfg):
    robot = robot or SpyRobot()
    cfg.setdefault("max_steps", 25)
    with robot:
        loop = DeployLoop(policy, robot, LoopConfig(**cfg))
        try:
            report = loop.run_episode(0, seed=1)
        finally:
            loop.close()
        robot.stops_in_episode = robot.stops  # before `with` exits (its __exit__ stops too)
    return report, robot, loop


def stopped_by_the_loop(robot) -> bool:
    """The loop itself stopped the robot (not only the `with` block's exit), and sent nothing
    after that first stop."""
    stops = getattr(robot, "stops_in_episode", robot.stops)  # inside `with`: the count so far
    return stops >= 1 and robot.sent_at_stop[0] == len(robot.sent)


def test_loop_reaches_the_goal_with_the_expert_in_the_loop() -> None:
    report, robot, _ = _run(ScriptedPolicy(), max_steps=150)
    assert report.success and report.fault is None
    assert robot.stops >= 1  # the episode end stopped the robot


def test_policy_sees_to_frames_and_actions_carry_due_times() -> None:
    policy = ScriptedPolicy(expert=False)
    report, robot, _ = _run(policy)
    assert policy.windows[0]["agent_pos"].shape == (1, 2, 2)  # (B, To, 2)
    assert set(policy.windows[0]) == {"agent_pos", "agent_vel"}  # no timestamp / seq
    used = [s for s in report.log if s.chunk >= 0]
    assert used and sum(at is not None for _, at in robot.sent) == len(used)  # holds: None
    assert [s.energy for s in used][0] is not None


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_inference_delay_up_to_a_chunk_never_stops_the_robot(factor: float) -> None:
    report, robot, _ = _run(ScriptedPolicy(delay_s=factor * CHUNK_S, expert=False))
    assert report.fault is None and report.steps == 25
    assert all(np.all(np.isfinite(a)) for a, _ in robot.sent)
    if factor >= 1.0:  # every chunk arrives after its actions' ticks: held, counted
        assert report.events["over_budget"] > 0


def test_inference_delay_of_three_chunks_trips_the_watchdog() -> None:
    report, robot, _ = _run(ScriptedPolicy(delay_s=3 * CHUNK_S, expert=False), warmup_plans=0)
    assert report.fault == "watchdog"
    assert stopped_by_the_loop(robot)


def test_stalled_inference_thread_stops_the_robot_within_the_watchdog_time() -> None:
    report, robot, loop = _run(ScriptedPolicy(stall_on={3}, expert=False), max_steps=200)
    assert report.fault == "watchdog" and stopped_by_the_loop(robot)
    last_fresh = max(s.tick for s in report.log if s.chunk >= 0)
    assert report.log[-1].tick - last_fresh <= loop.watchdog_stop_s + 0.5  # tolerant
    assert "hold_watchdog" in report.events


def test_policy_raising_falls_back_to_hold_then_stops() -> None:
    report, robot, _ = _run(ScriptedPolicy(raise_on=set(range(2, 10_000)), expert=False))
    assert report.events["plan_error"] > 0
    assert report.fault == "watchdog" and stopped_by_the_loop(robot)


def test_nan_chunks_are_held_and_k_in_a_row_stop_the_robot() -> None:
    policy = ScriptedPolicy(nan=set(range(2, 10_000)), expert=False)
    report, robot, _ = _run(policy, max_steps=100, safety=SafetyConfig(max_nonfinite=3))
    assert report.fault == "nonfinite" and stopped_by_the_loop(robot)
    assert report.events["plan_nonfinite"] == 3
    assert all(np.all(np.isfinite(a)) for a, _ in robot.sent)


def test_an_occasional_nan_chunk_is_skipped_without_a_stop() -> None:
    report, robot, _ = _run(ScriptedPolicy(nan={3, 5, 7}, expert=False), max_steps=40)
    assert report.fault is None and report.events["plan_nonfinite"] >= 1
    assert all(np.all(np.isfinite(a)) for a, _ in robot.sent)


def test_huge_outputs_are_clipped_and_rate_limited() -> None:
    policy = ScriptedPolicy(huge=set(range(1, 10_000)), expert=False)
    report, robot, _ = _run(policy, safety=SafetyConfig(max_step_change=0.25))
    sent = np.array([a for a, _ in robot.sent])
    assert np.all(np.abs(sent) <= 1.0) and np.all(np.abs(np.diff(sent, axis=0)) <= 0.25 + 1e-9)
    assert report.events["clipped"] > 0 and report.events["step_capped"] > 0


def test_frozen_observation_stream_holds_then_stops() -> None:
    robot = SpyRobot()
    robot.freeze_after = 8
    report, robot, _ = _run(
        ScriptedPolicy(expert=False), robot, max_steps=100,
        safety=SafetyConfig(max_obs_age_s=0.1, max_stale=5),
    )  # fmt: skip
    assert report.events["hold_obs"] >= 1
    assert report.fault == "stale" and stopped_by_the_loop(robot)


def test_an_exception_inside_the_loop_still_stops_the_robot() -> None:
    robot = SpyRobot()

    def boom(log, obs) -> None:
        if log.step == 5:
            raise RuntimeError("recorder died")

    with robot:
        loop = DeployLoop(ScriptedPolicy(expert=False), robot, LoopConfig(max_steps=25), boom)
        with pytest.raises(RuntimeError, match="recorder died"):
            loop.run_episode()
        assert stopped_by_the_loop(robot) and robot.stops == 1
        loop.close()


def test_ctrl_c_inside_the_loop_still_stops_the_robot() -> None:
    robot = SpyRobot()

    def interrupt(log, obs) -> None:
        raise KeyboardInterrupt

    with robot:
        loop = DeployLoop(ScriptedPolicy(expert=False), robot, LoopConfig(max_steps=25), interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_episode()
        assert stopped_by_the_loop(robot)
        loop.close()


def test_estop_from_another_thread_latches_until_reset() -> None:
    robot = SpyRobot()
    with robot:
        loop = DeployLoop(ScriptedPolicy(expert=False), robot, LoopConfig(max_steps=200))
        threading.Timer(0.2, loop.estop, args=("test",)).start()
        report = loop.run_episode()
        assert report.fault == "estop" and stopped_by_the_loop(robot)
        assert loop.safety.fault is not None  # latched until the next episode's reset
        again = loop.run_episode(1, seed=2)
        assert again.fault == "estop" and again.steps == 0  # a new episode does not clear it
        loop.reset()  # the operator's explicit reset does
        third = loop.run_episode(2, seed=3)
        assert third.fault is None and third.steps > 10
        loop.close()


def test_energy_above_the_stop_threshold_stops_the_robot() -> None:
    policy = ScriptedPolicy(expert=False)  # energy 0.5 + call index
    report, robot, _ = _run(policy, max_steps=100, energy=EnergyConfig(stop_above=2.9))
    assert report.fault == "energy" and stopped_by_the_loop(robot)
    assert policy.calls == 4  # warm-up, first chunk, 2.5, then 3.5 > 2.9


def test_a_spread_threshold_acts_on_the_spread_not_the_energy() -> None:
    spreads = [0.01, 0.01, 0.01, 0.5]  # the 4th plan's candidates disagree
    policy = ScriptedPolicy(expert=False, energies=[9.0], spreads=spreads)
    energy = EnergyConfig(stop_above=0.1, statistic="spread")
    report, robot, _ = _run(policy, max_steps=100, energy=energy)
    assert report.fault == "energy" and stopped_by_the_loop(robot)
    assert policy.calls == 4  # energy 9 everywhere: only the spread crossed the threshold
    assert report.log[0].spread == pytest.approx(0.01)
    # the same plans, thresholds on the energy: the spread is not looked at
    policy = ScriptedPolicy(expert=False, energies=[0.1], spreads=spreads)
    report, _, _ = _run(policy, max_steps=40, energy=EnergyConfig(stop_above=0.2))
    assert report.fault is None
    with pytest.raises(ConfigError, match="statistic"):
        EnergyConfig(statistic="entropy")


class _Descent:
    descent_steps = 3


class SteppablePolicy(ScriptedPolicy):
    """A scripted policy with EBT's set_inference, recording the descent steps it plans with."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.config = type("Cfg", (), {"descent": _Descent()})()
        self.steps_used: list[int] = []

    def set_inference(self, descent_steps=None, descent_min_grad=None) -> None:
        self.config.descent.descent_steps = descent_steps

    def predict_chunk(self, obs_window, rows=None) -> ChunkPrediction:
        self.steps_used.append(self.config.descent.descent_steps)
        return super().predict_chunk(obs_window, rows)


def test_a_high_energy_chunk_is_held_and_replanned_with_more_steps() -> None:
    policy = SteppablePolicy(expert=False, energies=[0.1, 0.1, 5.0, 0.1])
    energy = EnergyConfig(replan_above=1.0, replan_steps=20)
    report, robot, _ = _run(policy, energy=energy)
    assert report.fault is None and report.events["energy_replan"] == 1
    assert policy.steps_used[:4] == [3, 3, 3, 20] and set(policy.steps_used[4:]) == {3}


def test_a_middling_energy_chunk_is_executed_with_smaller_steps() -> None:
    policy = ScriptedPolicy(expert=False, energies=[0.1, 0.5])  # the constant action 0.2
    energy = EnergyConfig(scale_above=0.3, scale_factor=0.5)
    report, robot, _ = _run(policy, energy=energy)
    used = np.array([s.action for s in report.log if s.chunk >= 1])  # chunks after the first
    np.testing.assert_allclose(used, np.tile([0.1, 0.0], (len(used), 1)))
    assert report.events["energy_scaled"] > 0


@pytest.mark.parametrize(
    "kw",
    [{"scale_above": 2.0, "stop_above": 1.0}, {"replan_above": 3.0, "stop_above": 3.0},
     {"scale_factor": 0.0}, {"replan_steps": 0}],
)  # fmt: skip
def test_energy_thresholds_out_of_order_refuse_to_start(kw) -> None:
    with pytest.raises(ConfigError, match="EnergyConfig"):
        EnergyConfig(**kw)


def test_a_plan_in_flight_when_an_episode_ends_is_never_executed_in_the_next() -> None:
    from ebt_policy.deploy.inference import InferenceWorker

    policy = ScriptedPolicy(expert=False, delay_s=0.1)
    worker = InferenceWorker(policy, dt=0.02)
    frame = {"agent_pos": np.zeros(2), "agent_vel": np.zeros(2), "timestamp": 1.0, "seq": 1}
    worker.start_episode(frame, seed=0)
    worker.request()  # episode 1's plan, still running when episode 2 starts
    worker.start_episode({**frame, "timestamp": 2.0, "seq": 2}, seed=1)
    worker.request()
    result = worker.wait(5.0)
    assert result.t_obs == 2.0 and not worker.in_flight
    assert worker.wait(0.3) is None  # episode 1's result was dropped
    worker.close()


class WarmupSpikePolicy(ScriptedPolicy):
    """The first call (compilation, caches) takes 0.5 s; later ones are fast."""

    def predict_chunk(self, obs_window, rows=None) -> ChunkPrediction:
        if self.calls == 0:
            time.sleep(0.5)
        return super().predict_chunk(obs_window, rows)


def test_a_warmup_latency_spike_neither_faults_nor_starves_the_loop() -> None:
    report, robot, loop = _run(WarmupSpikePolicy(expert=False), max_steps=40)
    assert report.fault is None
    assert report.events["over_budget"] <= 2  # tolerant: the cores are shared


def test_the_warmup_plan_keeps_its_spike_out_of_the_first_chunk_and_the_latency_stats() -> None:
    """Compared with warm-up on and off: without it the slow first plan's chunk is the episode's
    first and its actions are already due when the clock starts (held, counted over budget);
    with it the spike is thrown away, the first chunk is fresh, and the latency the scheduler
    uses (``steady_latencies``) never contains the 0.5 s spike."""
    cold, _, cold_loop = _run(WarmupSpikePolicy(expert=False), max_steps=12, warmup_plans=0)
    warm, _, warm_loop = _run(WarmupSpikePolicy(expert=False), max_steps=12, warmup_plans=1)
    first_ticks = lambda r: [e for s in r.log[:TA] for e in s.events]  # noqa: E731
    assert "over_budget" in first_ticks(cold)
    assert "over_budget" not in first_ticks(warm)
    assert warm.log[0].chunk >= 0 and warm.log[0].latency_s < 0.25
    for loop in (cold_loop, warm_loop):
        assert loop.steady_latencies and max(loop.steady_latencies) < 0.25
        assert loop._lead_s() < 0.25 + loop.dt


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_actions_are_never_sent_before_their_tick(offset: float) -> None:
    """With ``action_offset`` the chunk's first action is due offset periods after capture:
    until its tick comes the loop sends nothing (event ``early``; the robot keeps its current
    action) instead of sending it ahead."""
    report, robot, loop = _run(ScriptedPolicy(expert=False), max_steps=20, action_offset=offset)
    assert report.fault is None
    sends = zip(robot.sent, robot.sent_wall, strict=True)
    ahead = [at - wall for (_, at), wall in sends if at is not None]
    assert ahead and max(ahead) < loop.dt / 2 + 0.005
    if offset > 0.5:  # (with 0 a tick after a late one can also come early: not asserted)
        assert report.events["early"] > 0


def test_a_sim_robot_runs_each_chunk_from_its_first_action() -> None:
    """A stepped simulator publishes, at a tick, the state the next tick's action acts on, so
    the loop dates a chunk's first action one period after the frame (the robot's
    ``action_offset``): as ``eval`` steps the env, no action of a fast plan is skipped. With
    offset 0 (hardware timing) each chunk's first action is already past and dropped, which
    on ``can`` cost 4/20 successes against 15/20 (README, "Run on a robot")."""

    def first_action_dropped(report) -> list[bool]:
        seen, out = set(), []
        for tick in report.log:
            if tick.chunk >= 0 and tick.chunk not in seen:
                seen.add(tick.chunk)
                out.append(any(e.startswith("dropped_late") for e in tick.events))
        return out[1:]  # the first chunk is planned before the clock starts

    report, _, loop = _run(ScriptedPolicy(expert=False), max_steps=60)
    assert loop.action_offset == 1.0 and report.fault is None
    dropped = first_action_dropped(report)
    assert len(dropped) >= 8 and sum(dropped) <= len(dropped) // 4, dropped
    report, _, loop = _run(ScriptedPolicy(expert=False), max_steps=60, action_offset=0.0)
    dropped = first_action_dropped(report)
    assert len(dropped) >= 8 and sum(dropped) >= 3 * len(dropped) // 4, dropped
