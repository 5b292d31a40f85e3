"""The safety layer, one test per scenario (see shared/docs/deploy-safety.md)."""

from __future__ import annotations

import numpy as np
import pytest

from ebt_policy.deploy.robot import RobotSpec
from ebt_policy.deploy.safety import SafetyConfig, SafetyLayer, validate_limits
from ebt_policy.errors import ConfigError

SPEC = RobotSpec("arm", 2, (-1.0, -2.0), (1.0, 2.0), 20.0, ("q",))


def _layer(**kw) -> SafetyLayer:
    return SafetyLayer(SPEC, SafetyConfig(**{"max_step_change": None, **kw}))


def _obs(seq: int, ts: float) -> dict:
    return {"q": np.zeros(2), "seq": seq, "timestamp": ts}


@pytest.mark.parametrize(
    ("low", "high", "what"),
    [
        ([np.nan, -1.0], [1.0, 1.0], "finite"),
        ([-1.0, -1.0], [np.inf, 1.0], "finite"),
        ([1.0, -1.0], [-1.0, 1.0], "high > low"),  # reversed: negative range
        ([0.0, 0.0], [0.0, 1.0], "high > low"),  # zero range
        ([-1.0], [1.0], "shape"),
        ([[-1.0, -1.0]], [[1.0, 1.0]], "shape"),
    ],
)
def test_bad_limits_refuse_to_start(low, high, what) -> None:
    with pytest.raises(ConfigError, match=what):
        validate_limits(low, high, 2)
    spec = RobotSpec("bad", 2, tuple(np.ravel(low)), tuple(np.ravel(high)), 20.0, ("q",))
    if np.ndim(low) == 1:  # the layer checks the robot's limits the same way
        with pytest.raises(ConfigError):
            SafetyLayer(spec)


@pytest.mark.parametrize("hz", [0.0, -5.0, np.nan, np.inf])
def test_bad_control_rate_refuses_to_start(hz) -> None:
    with pytest.raises(ConfigError, match="control rate"):
        SafetyLayer(RobotSpec("arm", 2, (-1.0, -1.0), (1.0, 1.0), hz, ("q",)))


@pytest.mark.parametrize(
    "kw", [{"max_step_change": 0.0}, {"max_obs_age_s": np.nan}, {"max_stale": 0}]
)
def test_bad_safety_thresholds_refuse_to_start(kw) -> None:
    with pytest.raises(ConfigError, match="SafetyConfig"):
        SafetyConfig(**kw)


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf, float("nan")])
def test_nonfinite_action_is_held_not_clipped_through(bad) -> None:
    layer = _layer()
    layer.filter(np.array([0.5, 0.5]))
    sent, events = layer.filter(np.array([bad, 0.0]))
    assert events == ["nonfinite"]
    np.testing.assert_array_equal(sent, [0.5, 0.5])  # held, not clip(NaN) = NaN


def test_signalling_nan_is_rejected() -> None:
    snan = np.array([0x7FF0000000000001], np.uint64).view(np.float64)
    sent, events = _layer().filter(np.array([snan[0], 0.0]))
    assert events == ["nonfinite"] and np.all(np.isfinite(sent))


def test_k_nonfinite_outputs_in_a_row_latch_a_stop() -> None:
    layer = _layer(max_nonfinite=3)
    layer.filter(np.array([0.5, 0.5]))
    for _ in range(2):
        layer.filter(np.array([np.nan, 0.0]))
    assert layer.fault is None
    sent, _ = layer.filter(np.array([np.nan, 0.0]))
    assert layer.fault is not None and layer.fault.reason == "nonfinite"
    np.testing.assert_array_equal(sent, layer.stop_action)


def test_a_finite_output_restarts_the_nonfinite_count() -> None:
    layer = _layer(max_nonfinite=2)
    for _ in range(5):
        layer.filter(np.array([np.nan, 0.0]))
        layer.filter(np.array([0.1, 0.1]))
    assert layer.fault is None and layer.events["nonfinite"] == 5


def test_position_beyond_the_limits_is_clipped_to_them() -> None:
    sent, events = _layer().filter(np.array([5.0, -7.0]))
    np.testing.assert_array_equal(sent, [1.0, -2.0])
    assert events == ["clipped"]


def test_in_limit_action_passes_unchanged() -> None:
    a = np.array([0.3, -1.5])
    sent, events = _layer().filter(a)
    np.testing.assert_array_equal(sent, a)
    assert events == []


def test_large_jump_is_capped_and_the_recorded_action_is_the_one_sent() -> None:
    layer = _layer(max_step_change=0.1)
    layer.reset(np.array([0.0, 0.0]))
    sent, events = layer.filter(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(sent, [0.1, -0.1])
    assert events == ["step_capped"]
    np.testing.assert_array_equal(layer.last_action, sent)


def test_random_targets_never_exceed_limits_or_step_cap() -> None:
    layer = _layer(max_step_change=0.2)
    rng = np.random.default_rng(0)
    prev = layer.last_action.copy()
    for _ in range(500):
        sent, _ = layer.filter(rng.normal(scale=3.0, size=2))
        assert np.all(sent >= layer.low) and np.all(sent <= layer.high)
        assert np.all(np.abs(sent - prev) <= 0.2 + 1e-12)
        prev = sent


def test_wrong_shape_action_latches_a_fault() -> None:
    layer = _layer()
    _, events = layer.filter(np.zeros(3))
    assert events == ["shape"] and layer.fault.reason == "shape"


def test_fresh_then_repeated_observation() -> None:
    layer = _layer(max_obs_age_s=0.1)
    assert layer.check_observation(_obs(1, 10.0), now=10.01) is None
    assert layer.check_observation(_obs(1, 10.0), now=10.02) == "repeat"
    assert layer.check_observation(_obs(2, 10.05), now=10.06) is None


def test_old_observation_is_stale() -> None:
    layer = _layer(max_obs_age_s=0.1)
    assert layer.check_observation(_obs(1, 10.0), now=10.5) == "stale"


def test_frozen_stream_latches_a_stale_fault() -> None:
    layer = _layer(max_obs_age_s=0.1, max_stale=3)
    layer.check_observation(_obs(1, 10.0), now=10.0)
    for i in range(3):
        assert layer.check_observation(_obs(1, 10.0), now=10.2 + i) == "stale"
    assert layer.fault is not None and layer.fault.reason == "stale"


@pytest.mark.parametrize(("seq", "ts"), [(4, 10.1), (6, 9.9), (6, 10.0)])
def test_sequence_or_timestamp_going_backwards_is_rejected(seq, ts) -> None:
    layer = _layer(max_obs_age_s=None)
    layer.check_observation(_obs(5, 10.0), now=10.0)
    assert layer.check_observation(_obs(seq, ts), now=10.1) == "out_of_order"


def test_faults_latch_until_an_explicit_reset() -> None:
    layer = _layer()
    layer.trip("estop", "operator")
    layer.trip("watchdog")
    assert layer.fault.reason == "estop"  # the first cause is kept
    sent, events = layer.filter(np.array([0.5, 0.5]))
    assert events == ["faulted"]
    np.testing.assert_array_equal(sent, layer.stop_action)
    layer.filter(np.array([0.5, 0.5]))
    assert layer.fault is not None  # good actions do not clear it
    layer.reset()
    assert layer.fault is None
    assert layer.filter(np.array([0.5, 0.5]))[1] == []


def test_stop_action_of_a_delta_robot_is_zero() -> None:
    spec = RobotSpec("v", 2, (-1.0, -1.0), (1.0, 1.0), 20.0, ("q",), action_kind="delta")
    layer = SafetyLayer(spec, SafetyConfig(max_step_change=None))
    layer.filter(np.array([0.9, 0.9]))
    layer.trip("estop")
    np.testing.assert_array_equal(layer.hold(), [0.0, 0.0])


def test_acceleration_limit_ramps_a_sudden_change() -> None:
    layer = _layer(max_step_change=1.0, max_step_accel=0.1)
    layer.reset(np.array([0.0, 0.0]))
    sent = [layer.filter(np.array([0.0, 1.0]))[0][1] for _ in range(4)]  # limit 2: far away
    np.testing.assert_allclose(sent, [0.1, 0.3, 0.6, 1.0])  # steps 0.1, 0.2, 0.3, 0.4
    assert layer.events["accel_capped"] == 3


def test_acceleration_limit_slows_down_before_a_position_limit() -> None:
    layer = _layer(max_step_change=1.0, max_step_accel=0.1)
    layer.reset(np.array([0.0, 0.0]))
    xs = [layer.filter(np.array([5.0, 0.0]))[0][0] for _ in range(30)]  # past the limit 1.0
    assert max(xs) <= 1.0 and xs[-1] == pytest.approx(1.0, abs=0.1)
    steps = np.diff([0.0, *xs])
    assert np.all(np.abs(np.diff([0.0, *steps])) <= 0.1 + 1e-9)  # braked within the limit


def test_random_targets_never_exceed_the_acceleration_limit() -> None:
    layer = _layer(max_step_change=0.3, max_step_accel=0.05)
    rng = np.random.default_rng(1)
    prev, prev_step = layer.last_action.copy(), np.zeros(2)
    for _ in range(300):
        sent, _ = layer.filter(rng.uniform(-1, 1, size=2))
        step = sent - prev
        assert np.all(np.abs(step) <= 0.3 + 1e-9)
        assert np.all(np.abs(step - prev_step) <= 0.05 + 1e-9)
        prev, prev_step = sent, step


def test_hold_stops_a_delta_robot_and_keeps_an_absolute_robots_target():
    """Holding (no usable fresh action) must not repeat a velocity command: a delta robot gets
    zero, so it stays while the loop is blind; an absolute robot keeps its last safe target."""
    delta = SafetyLayer(
        RobotSpec("base", 2, (-1.0, -1.0), (1.0, 1.0), 20.0, ("q",), action_kind="delta"),
        SafetyConfig(max_step_change=None),
    )
    sent, _ = delta.filter(np.array([0.8, -0.5]))
    assert np.allclose(sent, [0.8, -0.5])
    np.testing.assert_array_equal(delta.hold(), [0.0, 0.0])
    absolute = _layer()
    target, _ = absolute.filter(np.array([0.3, 1.5]))
    np.testing.assert_array_equal(absolute.hold(), target)


@pytest.mark.parametrize("how", ["hold", "fault"])
def test_holding_an_absolute_robot_brakes_within_the_acceleration_limit(how: str) -> None:
    """An absolute robot moving at speed must not be frozen in one tick when the loop holds
    (or a fault latches): with ``max_step_accel`` its target keeps moving and slows down by at
    most the limit per tick, and then stands still, inside the action limits."""
    layer = _layer(max_step_change=1.0, max_step_accel=0.1)
    layer.reset(np.array([0.0, 0.0]))
    sent = [layer.filter(np.array([0.0, 1.9]))[0] for _ in range(3)]  # steps 0.1, 0.2, 0.3
    if how == "fault":
        layer.trip("estop")
    for _ in range(6):
        sent.append(layer.hold() if how == "hold" else layer.filter(np.array([0.0, -2.0]))[0])
    ys = np.array([0.0, *(s[1] for s in sent)])
    steps = np.diff(ys)
    np.testing.assert_allclose(steps, [0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    assert np.all(np.abs(np.diff([0.0, *steps])) <= 0.1 + 1e-12)
    assert ys.max() <= 2.0


def test_holding_an_absolute_robot_near_its_limit_stays_inside_it() -> None:
    layer = _layer(max_step_change=1.0, max_step_accel=0.1)
    layer.reset(np.array([0.0, 0.0]))
    for _ in range(12):  # run at the position limit 1.0 as fast as braking allows
        layer.filter(np.array([5.0, 0.0]))
    xs = [layer.hold()[0] for _ in range(10)]
    assert max(xs) <= 1.0 and xs[-1] == xs[-2]  # stopped, inside
