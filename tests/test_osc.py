"""OSC as a patch sends it: real UDP on loopback into a running server (tiny model, clock output)."""

import time

import pytest

from bridge.live.serve import ServeOptions, Server
from tests.oscclient import Client, bundle, message

STATUS_KEYS = {"alphas", "targets", "prompt", "model", "device", "sample_rate", "frames_generated", "rtf",
               "buffer_ms", "underruns", "control_latency_ms", "errors"}


@pytest.fixture
def server(tiny, vectors_dir, tmp_path):
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False)
    srv = Server(options, handle=tiny)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.osc.port)
    yield c
    c.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_status_has_the_contract_keys_and_follows_changes(server, client) -> None:
    status = client.status()
    assert status.keys() >= STATUS_KEYS
    assert status["targets"] == {"tempo": 0.0, "timbre": 0.0} and status["model"] == "tiny"
    client.send("/steer/timbre", 2.5)
    client.send("/steer/tempo/knob", 0.75)
    client.send("/prompt", "slow dark ambient")
    client.send("/gen/guidance", 4.0)
    client.send("/gen/top_k", 50)
    status = client.status()
    assert status["targets"] == {"timbre": 2.5, "tempo": 3.0}  # knob 0.75 of -6..6
    assert status["prompt"] == "slow dark ambient" and status["settings"]["guidance_scale"] == 4.0
    assert status["settings"]["top_k"] == 50 and status["errors"] == 0
    assert wait_for(lambda: abs(client.status()["alphas"]["timbre"] - 2.5) < 1e-3)  # the engine got there
    assert wait_for(lambda: client.status()["control_latency_ms"]["n"] >= 1)


BAD = [
    (message("/steer/timbre", "loud"), "must be a number"),
    (message("/steer/timbre"), "expected 1 argument"),
    (message("/steer/timbre", 1.0, 2.0), "expected 1 argument"),
    (message("/steer/timbre", float("nan")), "finite"),
    (message("/steer/timbre", float("inf")), "finite"),
    (message("/steer/timbre", 60.0), "outside timbre's range"),
    (message("/steer/timbre/knob", 1.5), "outside 0..1"),
    (message("/steer/timbre/on", 3), "0 or 1"),
    (message("/steer/nope", 1.0), "unknown concept 'nope'"),
    (message("/prompt", "x" * 5000), "limit is 500"),
    (message("/prompt", "   "), "empty"),
    (message("/gen/top_k", 2.5), "whole number"),
    (message("/gen/temperature", -1.0), "temperature"),
    (message("/scene/save", "../../etc/passwd"), "no paths"),
    (message("/scene/recall", "/tmp/x"), "no paths"),
    (message("/scene/recall", "never_saved"), "no scene named"),
    (message("/midi/learn", "/steer/timbre/knob"), "MIDI input"),
    (message("/nowhere", 1), "unknown address"),
    (b"\x00\x01garbage", "undecodable"),
    (b"#bundle\x00garbage", "undecodable"),
    (bundle(time.time() + 3600, message("/steer/timbre", 1.0)), "ahead"),
]


@pytest.mark.parametrize(("packet", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_messages_are_answered_counted_and_change_nothing(server, client, packet, reason) -> None:
    before = client.status()
    client.raw(packet)
    reply = client.recv()
    assert reply is not None and reply.address == "/error" and reason in reply.params[0], reply and reply.params
    after = client.status()
    assert after["errors"] == before["errors"] + 1
    for key in ("targets", "enabled", "prompt", "settings"):
        assert after[key] == before[key]


def test_wildcards_reach_every_matching_concept(server, client) -> None:
    client.send("/steer/*/knob", 1.0)
    assert client.status()["targets"] == {"tempo": 6.0, "timbre": 6.0}
    client.send("/steer/t[ie]*", 2.0)
    assert client.status()["targets"] == {"tempo": 2.0, "timbre": 2.0}
    client.send("/steer/*", 99.0)  # out of range for all: rejected whole
    assert client.status()["targets"] == {"tempo": 2.0, "timbre": 2.0}


def test_future_bundles_do_not_stall_the_server(server, client) -> None:
    client.raw(bundle(time.time() + 1.5, message("/steer/tempo", 4.0)))
    t = time.monotonic()
    assert client.status()["targets"]["tempo"] == 0.0
    assert time.monotonic() - t < 0.5  # answered while the bundle waits
    assert wait_for(lambda: client.status()["targets"]["tempo"] == 4.0, timeout=4.0)


def test_feedback_goes_to_subscribers_but_not_back_to_the_mover(server) -> None:
    mover, watcher = Client(server.osc.port), Client(server.osc.port)
    try:
        for c in (mover, watcher):
            c.send("/subscribe", "127.0.0.1", c.port)
        assert any(m.address == "/steer/timbre" for m in watcher.drain())  # the full state on subscribing
        mover.drain()
        for v in (0.1, 0.2, 0.3, 0.4, 0.5):
            mover.send("/steer/timbre/knob", v)
        got = watcher.drain(0.4)
        knob = [m.params[0] for m in got if m.address == "/steer/timbre/knob"]
        assert knob and knob[-1] == pytest.approx(0.5) and len(knob) < 5  # latest value, throttled
        assert not [m for m in mover.drain(0.4) if m.address.startswith("/steer/")]
        watcher.send("/steer/tempo", -1.0)
        assert any(m.address == "/steer/tempo" and m.params[0] == -1.0 for m in mover.drain(0.4))
    finally:
        mover.close()
        watcher.close()


def test_scenes_save_recall_and_morph(server, client, tmp_path) -> None:
    client.send("/steer/timbre", 4.0)
    client.send("/steer/tempo", -2.0)
    client.send("/scene/save", "a")
    client.send("/steer/timbre", -4.0)
    client.send("/steer/tempo", 2.0)
    client.send("/prompt", "a new prompt")
    client.send("/scene/save", "b")
    assert client.status()["errors"] == 0
    assert (tmp_path / "scenes" / "a.json").is_file()
    client.send("/scene/recall", "a")
    status = client.status()
    assert status["targets"] == {"timbre": 4.0, "tempo": -2.0} and status["prompt"] != "a new prompt"
    client.send("/scene/morph", "a", "b", 0.75)
    status = client.status()
    assert status["targets"] == {"timbre": pytest.approx(-2.0), "tempo": pytest.approx(1.0)}
    assert status["prompt"] == "a new prompt"


def test_panic_and_transport(server, client) -> None:
    client.send("/steer/timbre", 5.0)
    client.send("/panic")
    assert client.status()["targets"] == {"tempo": 0.0, "timbre": 0.0}
    assert wait_for(lambda: client.status()["alphas"] == {"tempo": 0.0, "timbre": 0.0})
    client.send("/transport/stop")
    assert wait_for(lambda: client.status()["playing"] is False)
    frames = client.status()["frames_generated"]
    time.sleep(0.3)
    assert client.status()["frames_generated"] == frames  # stopped means stopped
    client.send("/transport/play")
    assert wait_for(lambda: client.status()["frames_generated"] > frames + 5)
    assert client.status()["errors"] == 0
