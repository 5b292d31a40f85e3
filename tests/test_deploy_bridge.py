"""The robot bridge over loopback: RemoteRobot against RobotServer(SimRobot), heartbeats and the
silent-client stop, and malformed / oversized / replayed / wrong-version messages (plus a small
bounded fuzz loop) that must get an error reply and never take the server down."""

from __future__ import annotations

import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from ebt_policy.deploy.bridge import RemoteRobot, RobotConnectionError, RobotServer, check_bind
from ebt_policy.deploy.bridge.protocol import VERSION, decode, encode
from ebt_policy.deploy.loop import DeployLoop, LoopConfig
from ebt_policy.deploy.robots.sim import SimRobot
from ebt_policy.errors import ConfigError
from ebt_policy.policies.base import ChunkPrediction


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(request):
    """A RobotServer of a 100 Hz twogoal SimRobot on a free loopback port, in a thread."""
    kw = getattr(request, "param", {})
    address = f"tcp://127.0.0.1:{_free_port()}"
    srv = RobotServer(SimRobot("twogoal", control_hz=100), address, client_timeout_s=0.3, **kw)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    yield srv
    srv.stop_event.set()
    thread.join(5)


@pytest.fixture
def raw(server):
    """A bare DEALER socket on the server: send bytes, get the decoded reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.bind)

    def ask(frame: bytes) -> dict:
        sock.send(frame)
        assert sock.poll(2000), "the server did not answer"
        return decode(sock.recv())

    yield ask
    sock.close()


def _hello(ask, seq: int = 1, **extra) -> dict:
    return ask(encode("hello", seq, time.monotonic(), **extra))


def test_remote_robot_round_trip(server) -> None:
    with RemoteRobot(server.bind) as robot:
        assert robot.spec.name == "sim:twogoal" and robot.spec.action_dim == 2
        obs = robot.observation()
        assert obs["agent_pos"].shape == (2,) and obs["agent_pos"].dtype == np.float32
        assert abs(time.monotonic() - obs["timestamp"]) < 0.5  # in this process's clock
        x0 = obs["agent_pos"][0]
        robot.send(np.array([1.0, 0.0]), at_time=time.monotonic())
        end = time.monotonic() + 3
        while robot.observation()["agent_pos"][0] < x0 + 0.01 and time.monotonic() < end:
            time.sleep(0.01)
        assert robot.observation()["agent_pos"][0] >= x0 + 0.01
    assert server.robot._stopped  # the with-block stopped it through the bridge


class OtherClockRobot(SimRobot):
    """A SimRobot on a machine whose monotonic clock reads SHIFT_S more than this one's: its
    timestamps and the action times it is given are in that clock."""

    SHIFT_S = 1000.0

    def __init__(self) -> None:
        super().__init__("twogoal", control_hz=100)
        self.at_times: list[float | None] = []

    def observation(self):
        obs = super().observation()
        obs["timestamp"] = float(obs["timestamp"]) + self.SHIFT_S
        return obs

    def send(self, action, at_time=None) -> None:
        self.at_times.append(at_time)
        super().send(action, None if at_time is None else at_time - self.SHIFT_S)


def test_the_client_converts_timestamps_between_the_two_machines_clocks() -> None:
    robot = OtherClockRobot()
    srv = RobotServer(
        robot, f"tcp://127.0.0.1:{_free_port()}", clock=lambda: time.monotonic() + robot.SHIFT_S
    )
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(10)
    try:
        with RemoteRobot(srv.bind) as remote:
            for _ in range(5):  # a few round trips: the fastest one sets the offset
                obs = remote.observation()
            assert abs(obs["timestamp"] - time.monotonic()) < 0.1  # 1000 s off if unconverted
            due = time.monotonic() + 0.05
            remote.send(np.array([0.5, 0.0]), at_time=due)
            assert robot.at_times[-1] == pytest.approx(due + robot.SHIFT_S, abs=0.02)
    finally:
        srv.stop_event.set()
        thread.join(5)


def test_heartbeats_keep_an_idle_client_session_alive(server) -> None:
    with RemoteRobot(server.bind, heartbeat_s=0.05):
        time.sleep(1.0)  # > 3x the server's client timeout, no requests from the "loop"
        assert server.timeouts == 0


def test_server_stops_the_robot_when_the_client_goes_silent(server, raw) -> None:
    assert _hello(raw)["type"] == "ok"
    assert raw(encode("send", 2, time.monotonic(), {"action": np.ones(2)}))["type"] == "ok"
    t0 = time.monotonic()
    while server.timeouts == 0 and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert server.timeouts == 1 and server.robot._stopped
    assert time.monotonic() - t0 < 0.3 + 0.5  # within its timeout (tolerant)


def test_a_killed_client_process_stops_the_robot(server) -> None:
    robot = RemoteRobot(server.bind)
    robot.connect()
    robot.send(np.ones(2))
    robot._quit.set()  # the process dies: no heartbeats, no bye
    robot._sock.close()
    robot._sock = None
    end = time.monotonic() + 3
    while server.timeouts == 0 and time.monotonic() < end:
        time.sleep(0.01)
    assert server.timeouts == 1 and server.robot._stopped


@pytest.mark.parametrize(
    ("name", "frame", "why"),
    [
        ("garbage", b"\x00\xffnot msgpack", "msgpack"),
        ("not a map", msgpack.packb([1, 2, 3]), "not a map"),
        ("wrong version", msgpack.packb({"v": VERSION + 1, "type": "hello", "seq": 1, "t": 0.0,
                                         "body": {}}), "version"),
        ("no seq", msgpack.packb({"v": VERSION, "type": "hello", "t": 0.0, "body": {}}), "seq"),
        ("unknown type", encode("explode", 1, 0.0), "unknown request"),
        ("oversized", encode("hello", 1, 0.0, {"pad": b"x" * (5 * 2**20)}), "exceeds"),
        ("bad array", encode("hello", 1, 0.0, {"a": {"__nd__": "float32", "shape": [3],
                                                    "data": b"xx"}}), "array"),
        ("object dtype", encode("hello", 1, 0.0, {"a": {"__nd__": "object", "shape": [1],
                                                       "data": b"x"}}), "array"),
    ],
)  # fmt: skip
def test_malformed_messages_get_an_error_reply_and_the_server_carries_on(raw, name, frame, why):
    reply = raw(frame)
    assert reply["type"] == "error" and why in reply["body"]["error"], name
    assert _hello(raw, seq=100)["type"] == "ok"  # still serving


def test_replayed_and_reordered_messages_are_rejected(raw) -> None:
    assert _hello(raw, seq=5)["type"] == "ok"
    obs = encode("observation", 6, time.monotonic())
    assert raw(obs)["type"] == "ok"
    assert "replayed" in raw(obs)["body"]["error"]  # the same message again
    assert raw(encode("observation", 4, time.monotonic()))["type"] == "error"  # older seq
    assert raw(encode("observation", 7, time.monotonic()))["type"] == "ok"


def test_requests_without_a_session_and_bad_actions_are_rejected(raw) -> None:
    assert "hello first" in raw(encode("observation", 1, 0.0))["body"]["error"]
    _hello(raw, seq=2)
    bad = [np.ones(3), np.array([np.nan, 0.0]), "go"]
    for i, action in enumerate(bad):
        assert raw(encode("send", 3 + i, 0.0, {"action": action}))["type"] == "error"


def test_a_second_client_is_told_the_robot_is_busy(server, raw) -> None:
    assert _hello(raw)["type"] == "ok"
    with pytest.raises(RobotConnectionError, match="busy"):
        RemoteRobot(server.bind).connect()


def test_fuzzed_messages_never_crash_the_server(server, raw) -> None:
    rng = np.random.default_rng(0)
    valid = encode("send", 2, 0.0, {"action": np.zeros(2)})
    end = time.monotonic() + 5.0  # bounded in time and in count
    for _ in range(300):
        if time.monotonic() > end:
            break
        if rng.random() < 0.5:
            frame = rng.bytes(int(rng.integers(0, 200)))
        else:  # a valid message with a few bytes flipped
            b = bytearray(valid)
            for j in rng.integers(0, len(b), size=3):
                b[j] = int(rng.integers(0, 256))
            frame = bytes(b)
        raw(frame)  # any reply is fine: it must answer
    assert _hello(raw, seq=10**6)["type"] == "ok"
    assert server.errors > 0


@pytest.mark.parametrize("server", [{"token": "s3cret"}], indirect=True)
def test_a_token_is_checked_on_every_message(server, raw) -> None:
    assert "token" in _hello(raw)["body"]["error"]
    assert "token" in _hello(raw, seq=2, token="guess")["body"]["error"]
    assert _hello(raw, seq=3, token="s3cret")["type"] == "ok"
    assert raw(encode("observation", 4, 0.0))["type"] == "error"  # every message, not just hello
    assert raw(encode("bye", 5, 0.0, token="s3cret"))["type"] == "ok"  # frees the session
    with RemoteRobot(server.bind, token="s3cret") as robot:
        assert "agent_pos" in robot.observation()


def test_binding_beyond_loopback_needs_a_flag_and_a_token() -> None:
    check_bind("tcp://127.0.0.1:5555", False, None)
    with pytest.raises(ConfigError, match="allow-remote"):
        check_bind("tcp://0.0.0.0:5555", False, None)
    with pytest.raises(ConfigError, match="token"):
        check_bind("tcp://0.0.0.0:5555", True, None)
    check_bind("tcp://0.0.0.0:5555", True, "s3cret")
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        check_bind("ipc:///tmp/robot", False, None)


class ConstantPolicy:
    name = "constant"
    n_obs_steps, n_action_steps, horizon = 2, 4, 8

    def reset(self) -> None: ...

    def start_episode(self, row, seed) -> None: ...

    def predict_chunk(self, obs_window, rows=None) -> ChunkPrediction:
        a = np.full((1, 4, 2), 0.2, np.float32)  # (B, Ta, Da)
        return ChunkPrediction(actions=a, chunk=a)


def test_deploy_loop_runs_over_the_bridge(server) -> None:
    with RemoteRobot(server.bind) as robot:
        loop = DeployLoop(ConstantPolicy(), robot, LoopConfig(rate_hz=50, max_steps=25))
        report = loop.run_episode(0, seed=1)
        loop.close()
    assert report.fault is None and report.steps == 25
    # observations arrive fresh over the bridge (one machine, one clock: this does not test the
    # clock-offset arithmetic itself)
    assert report.events["hold_obs"] == 0


def test_a_killed_server_ends_the_loop_with_a_connection_error(server) -> None:
    robot = RemoteRobot(server.bind, timeout_s=0.3)
    robot.connect()
    loop = DeployLoop(ConstantPolicy(), robot, LoopConfig(rate_hz=50, max_steps=500))
    threading.Timer(0.3, server.stop_event.set).start()
    t0 = time.monotonic()
    with pytest.raises(RobotConnectionError):
        loop.run_episode()
    assert time.monotonic() - t0 < 5
    loop.close()
    robot.disconnect()
