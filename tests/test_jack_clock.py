"""JACK transport as the musical clock, against a real ``jackd -d dummy`` and a timebase
master in the test (tests/realparts.py): ``--sync jack`` follows tempo, beat, start,
stop, relocation and tempo changes, survives its master and its server going away, and
``--sync jack-master`` leads a client that follows JACK."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.clock.jack_transport import TempoMap, TransportMotion
from bridge.clock.source import ClockError, ClockReading, ClockSource, SyncOptions, open_source
from tests.realparts import JackServer, TimebaseMaster, own_jack_server, wait_for

jack = pytest.importorskip("jack")

_names = itertools.count()


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[JackServer]:
    """A JACK server of this test's own (a test may stop it), the default for in-process clients."""
    yield from own_jack_server(tmp_path, monkeypatch, f"steerbridge-clock-{os.getpid()}-{next(_names)}")


class Readings(list[ClockReading]):
    """The sink: every reading, in order (appended on the source's thread)."""

    def since(self, n: int) -> list[ClockReading]:
        return self[n:]


def start_source(name: str, bpm: float = 120.0) -> tuple[ClockSource, Readings]:
    source = open_source(name, SyncOptions(bpm=bpm))
    readings = Readings()
    source.start(readings.append)
    return source, readings


def period_beats(master: TimebaseMaster) -> float:
    return master.period / master.rate * master.bpm / 60.0


def period_beats_at(bpm: float, period: int = 1024, rate: int = 48000) -> float:
    return period / rate * bpm / 60.0


def listener_latency_frames(master: TimebaseMaster) -> int:
    """What the source adds to a period's start: the period and the speakers' latency,
    read from JACK by jack_lsp (not by steerbridge's code)."""
    import re
    import subprocess

    out = subprocess.run(["jack_lsp", "-l", "system:playback_1"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"playback latency = \[ (\d+) (\d+) \]", out)
    assert found, out
    return master.period + int(found.group(2))


@pytest.mark.realtime
def test_jack_follows_a_timebase_master_at_128_bpm_within_a_period(server) -> None:
    master = TimebaseMaster(128.0)
    source, readings = start_source("jack")
    try:
        master.client.transport_start()
        assert wait_for(lambda: sum(r.playing for r in readings) >= 30), readings[-3:]
        latency = listener_latency_frames(master)
        rolling = [r for r in readings if r.playing][-20:]
        for reading in rolling:
            assert reading.bpm == pytest.approx(128.0, abs=0.01)
            # Where the master's transport was when the listener hears reading.at:
            heard = master.transport_frame_at(master.frame_time_at(reading.at) - latency)
            assert heard is not None and heard[1], "the master's cycles cover the reading"
            assert abs(reading.beat - master.beat_at(heard[0])) <= period_beats(master), (reading, heard)
        assert all(r.meter.beats_per_bar == 4 and r.meter.beat_unit == 4 for r in rolling)
        assert source.health()["server"] == "connected"
    finally:
        source.stop()
        master.close()


@pytest.mark.realtime
def test_jack_reports_start_stop_relocation_and_tempo_changes(server) -> None:
    master = TimebaseMaster(128.0)
    source, readings = start_source("jack")
    try:
        assert wait_for(lambda: len(readings) > 3) and not readings[-1].playing
        master.client.transport_start()
        assert wait_for(lambda: readings[-1].playing)
        n = len(readings)
        master.client.transport_stop()
        assert wait_for(lambda: not readings[-1].playing)
        stopped_at = readings[-1].beat
        time.sleep(0.2)
        assert readings[-1].beat == pytest.approx(stopped_at), "a stopped transport's beat stands still"
        assert not any(r.relocated for r in readings.since(n))

        n = len(readings)
        master.client.transport_frame = 48000 * 30  # 30 s in: beat 64 at 128 BPM
        assert wait_for(lambda: any(r.relocated for r in readings.since(n)))
        moved = next(r for r in readings.since(n) if r.relocated)
        assert moved.beat == pytest.approx(64.0, abs=1e-3) and not moved.playing

        master.client.transport_start()
        assert wait_for(lambda: readings[-1].playing)
        n = len(readings)
        master.client.transport_frame = 0  # a locate while rolling: relocated, and it keeps playing
        assert wait_for(lambda: any(r.relocated for r in readings.since(n)))
        assert all(r.playing for r in readings.since(n)), "a locate while rolling is not a stop"

        n = len(readings)
        master.set_tempo(140.0)
        assert wait_for(lambda: readings[-1].bpm == pytest.approx(140.0, abs=0.01))
        changed = readings.since(n)
        assert not any(r.relocated for r in changed), "a tempo change is no relocation"
    finally:
        source.stop()
        master.close()


@pytest.mark.realtime
def test_a_master_that_quits_leaves_the_tempo_held_and_a_new_one_is_followed(server, caplog) -> None:
    caplog.set_level(logging.INFO, "steerbridge.clock.jack")
    master = TimebaseMaster(128.0)
    source, readings = start_source("jack", bpm=90.0)
    master.client.transport_start()
    try:
        assert wait_for(lambda: sum(r.playing for r in readings) > 5)
        master.close()  # the DAW quits; JACK's transport rolls on without BBT
        n = len(readings)
        assert wait_for(lambda: len(readings) > n + 20)
        held = readings.since(n)
        assert all(r.bpm == 128.0 for r in held), "the last tempo holds, not --bpm"
        # The beat runs on at 128 from where the master left it. JACK itself steps its
        # transport back a period when the master leaves, and stands a few cycles
        # (STARTING): reported as the relocation it is, and then it runs on.
        assert held[0].beat == pytest.approx(readings[n - 1].beat, abs=2 * period_beats_at(128.0))
        assert any(r.relocated for r in held[:5])
        for a, b in itertools.pairwise(held[8:]):
            assert b.beat - a.beat == pytest.approx((b.at - a.at) * 128 / 60, abs=0.02), (a, b)
        assert sum("lost its timebase master" in r.message for r in caplog.records) == 1

        master = TimebaseMaster(100.0, name="test-master-2")
        assert wait_for(lambda: readings[-1].bpm == 100.0)
        assert any("has a timebase master" in r.message for r in caplog.records)
    finally:
        source.stop()
        master.close()


@pytest.mark.realtime
def test_a_server_that_goes_away_is_reported_once_and_picked_up_again(server, caplog) -> None:
    caplog.set_level(logging.INFO, "steerbridge.clock.jack")
    master = TimebaseMaster(128.0)
    source, readings = start_source("jack")
    master.client.transport_start()
    try:
        assert wait_for(lambda: sum(r.playing for r in readings) > 5)
        server.stop()
        master.close()  # the DAW goes with its server (a client of a dead server is closed, not left to the GC)
        assert wait_for(lambda: source.health()["server"] == "gone", 3)
        n = len(readings)
        time.sleep(1.5)
        assert len(readings) == n, "no readings from a server that is gone (the clock counts it stale)"
        age = source.health()["age_s"]
        assert source.timeout_s is not None and isinstance(age, float) and age > source.timeout_s
        assert sum("went away" in r.message for r in caplog.records) == 1

        server.start()
        master = TimebaseMaster(128.0)
        assert wait_for(lambda: len(readings) > n + 5, 12), "the source reconnects within its back-off"
        assert readings[n].relocated, "a new server's transport is a relocation"
        assert wait_for(lambda: readings[-1].bpm == 128.0)
        health = source.health()
        assert health["server"] == "connected" and health["reconnects"] == 1
        assert sum("is back" in r.message for r in caplog.records) == 1
        master.close()
    finally:
        source.stop()


def test_jack_follows_so_it_refuses_a_performers_tempo(server) -> None:
    source, _ = start_source("jack")
    try:
        for request in (lambda: source.request_tempo(100.0), lambda: source.request_playing(True),
                        lambda: source.request_beat(0.0)):
            with pytest.raises(ClockError, match=r"the DAW .* sets the tempo"):
                request()
    finally:
        source.stop()


def test_no_jack_server_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"steerbridge-absent-{os.getpid()}")
    for name in ("jack", "jack-master"):
        with pytest.raises(ClockError, match=f"--sync {name}: no JACK server 'steerbridge-absent-.*' is running"):
            open_source(name, SyncOptions())


@pytest.mark.realtime
def test_jack_master_leads_a_client_that_follows_jack(server) -> None:
    source, readings = start_source("jack-master", bpm=128.0)
    follower = jack.Client("test-follower", no_start_server=True)
    follower.activate()

    def heard() -> dict:
        return follower.transport_query()[1]

    try:
        assert wait_for(lambda: "bar" in heard()), "our BBT reaches other clients"
        assert heard()["beats_per_minute"] == 128.0 and heard()["beats_per_bar"] == 4.0
        source.request_playing(True)
        assert wait_for(lambda: follower.transport_state == jack.ROLLING)
        assert wait_for(lambda: heard()["bar"] >= 2, 5)
        before = heard()
        source.request_tempo(140.0)
        assert wait_for(lambda: heard()["beats_per_minute"] == 140.0)
        after = heard()
        beats = lambda p: (p["bar"] - 1) * 4 + p["beat"] - 1 + p["tick"] / p["ticks_per_beat"]  # noqa: E731
        elapsed = (after["frame"] - before["frame"]) / 48000
        assert beats(before) < beats(after) <= beats(before) + elapsed * 140 / 60 + 0.05, "no jump at the change"
        assert wait_for(lambda: readings[-1].bpm == 140.0), "our own readings follow our tempo"

        source.request_beat(32.0)  # bar 9
        assert wait_for(lambda: heard()["bar"] in (9, 10))
        source.request_playing(False)
        assert wait_for(lambda: follower.transport_state == jack.STOPPED)
        with pytest.raises(ClockError, match="400"):
            source.request_tempo(4000.0)
        assert source.health()["timebase_errors"] == 0
    finally:
        follower.deactivate()
        follower.close()
        source.stop()


# --- the arithmetic, without a server ------------------------------------------------
@given(st.lists(st.tuples(st.integers(0, 48000 * 600), st.floats(20.0, 400.0)), max_size=6),
       st.floats(0.0, 2000.0))
def test_the_tempo_map_finds_each_beats_frame_and_changes_tempo_without_a_jump(changes, beat) -> None:
    tempo = TempoMap(48000, bpms=(128.0,))
    for frame, bpm in sorted(changes):
        before = tempo.beat_at(frame)
        tempo = tempo.with_tempo(frame, bpm)
        assert tempo.beat_at(frame) == pytest.approx(before, abs=1e-9), "a tempo change moves no beat"
        assert tempo.bpm_at(frame) == bpm
    assert tempo.beat_at(tempo.frame_at(beat)) == pytest.approx(beat, abs=1 / 48000 * 400 / 60)
    assert list(tempo.frames) == sorted(tempo.frames) and list(tempo.beats) == sorted(tempo.beats)


def test_a_tempo_change_before_the_last_drops_the_later_ones() -> None:
    tempo = TempoMap(48000, bpms=(120.0,)).with_tempo(48000 * 10, 90.0).with_tempo(48000 * 5, 60.0)
    assert tempo.frames == (0, 48000 * 5) and tempo.bpm_at(48000 * 20) == 60.0
    assert tempo.beat_at(48000 * 6) == pytest.approx(10.0 + 1.0)  # 5 s at 120, then 1 s at 60


def test_late_cycles_are_no_relocation_and_a_locate_is() -> None:
    import random

    rng = random.Random(7)
    motion = TransportMotion()
    period, rate, frame, woke = 1024, 48000, 0, 100.0
    assert motion.cycle(woke, frame, False, period, rate) is False
    assert motion.cycle(woke + 0.02, frame, True, period, rate) is False  # starts: it stood still
    for _ in range(400):  # rolling, read a cycle or three apart, each wake-up up to 40 ms late
        cycles = rng.choice((1, 1, 2, 3))
        frame += cycles * period
        late = rng.uniform(0.0, 0.04)
        assert motion.cycle(woke + frame / rate + late, frame, True, period, rate) is False
    t = woke + frame / rate
    assert motion.cycle(t + 0.021, frame + 48000 * 30, True, period, rate) is True  # a locate forwards
    assert motion.cycle(t + 0.042, 0, True, period, rate) is True  # and back
    assert motion.cycle(t + 0.063, 700, True, period, rate) is True  # by part of a period
    assert motion.cycle(t + 0.084, 700 + period, False, period, rate) is False  # a stop, seen a cycle late
    assert motion.cycle(t + 0.105, 700 + period, False, period, rate) is False  # stopped: it stands
    assert motion.cycle(t + 0.126, 0, False, period, rate) is True  # a locate while stopped
