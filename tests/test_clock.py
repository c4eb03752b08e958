"""The musical clock (bridge/clock/clock.py) on a simulated ring: readings placed where
the listener is, jitter smoothed without drift, a jump re-phases, a source gone and
back is one line each; and the told sources (internal, osc) in bridge/clock/told.py."""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from fractions import Fraction

import pytest

from bridge.clock.clock import MusicalClock
from bridge.clock.grid import Quantize
from bridge.clock.source import SOURCES, ClockError, ClockReading, Meter, SyncOptions, open_source
from bridge.clock.told import InternalClock, OscTransport

RATE = 48_000
BLOCK = 480


class SimRing:
    """A reader that takes one block every 10 ms of simulated time, as the clock output does."""

    def __init__(self) -> None:
        self.reads: deque[tuple[int, float]] = deque(maxlen=512)
        self.read = 0
        self.t = 100.0

    def advance(self, seconds: float, jitter_s: float = 0.0, rng: random.Random | None = None) -> None:
        for _ in range(round(seconds * RATE / BLOCK)):
            self.t += BLOCK / RATE
            self.read += BLOCK
            wobble = rng.uniform(-jitter_s, jitter_s) if rng else 0.0
            self.reads.append((self.read, self.t + wobble))


class FakeSource:
    name = "fake"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.sink = None

    def start(self, sink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.sink = None

    def health(self) -> dict:
        return {"peers": 0}

    def request_tempo(self, bpm: float) -> None:
        raise ClockError("the fake sets the tempo")

    request_playing = request_beat = request_tempo


def make(latency_s: float = 0.0, timeout_s: float | None = None):
    ring, source = SimRing(), FakeSource(timeout_s)
    clock = MusicalClock(source, ring, RATE, latency_s, now=lambda: ring.t)
    clock.start()
    ring.advance(0.05)
    return ring, source, clock


def test_a_reading_is_placed_where_the_listener_hears_it() -> None:
    for latency in (0.0, 0.025):
        ring, source, clock = make(latency_s=latency)
        source.sink(ClockReading(120.0, 8.0, ring.t, True, Meter(4, 4)))
        snap = clock.update()
        # At ring.t the listener hears the block that left ``latency`` earlier.
        heard = ring.reads[-2][0] - round(latency * RATE)
        assert snap.grid is not None and snap.grid.beat_at(heard) == 8
        assert snap.bar_beat(heard) == (3, 1.0)
        assert snap.next_boundary(heard + 1, Quantize("bar")) == heard + 2 * RATE  # bar 4, two seconds on


def test_the_outputs_latency_is_followed_as_it_changes() -> None:
    latency = [0.0]
    ring, source = SimRing(), FakeSource()
    clock = MusicalClock(source, ring, RATE, 0.0, now=lambda: ring.t, latency_of=lambda: latency[0])
    clock.start()
    ring.advance(0.05)
    clock.update()
    before = clock.counter_at(ring.t)
    latency[0] = 0.043  # a DAW connected to our ports: the listener now hears 43 ms later
    clock.update()
    assert before is not None and clock.counter_at(ring.t) == before - round(0.043 * RATE)


def test_jitter_is_smoothed_and_a_constant_offset_followed_without_drift() -> None:
    rng = random.Random(7)
    ring, source, clock = make()
    bpm = 128.0
    start_t, offset = ring.t, 0.0
    errors = []
    for i in range(2000):  # 20 s, a reading every 10 ms with ±1 ms of jitter on its time
        ring.advance(0.01)
        if i == 1000:
            offset = 0.004  # the source moves 4 ms: a sound card's slow drift, or a new route
        true_t = ring.t
        beat = (true_t - start_t - offset) * bpm / 60
        source.sink(ClockReading(bpm, beat, true_t + rng.uniform(-0.001, 0.001), True))
        snap = clock.update()
        heard = ring.reads[-2][0]
        errors.append(float(snap.grid.beat_at(heard)) - beat)
    assert clock.relocations == 0
    ms = [abs(e) * 60 / bpm * 1000 for e in errors]
    assert max(ms[200:1000]) < 0.6  # smoother than the ±1 ms jitter
    assert max(ms[1300:]) < 0.6  # the 4 ms move followed, not drifted from
    assert len(snap.grid.segments) <= snap.grid.KEEP + 1


def test_a_jump_or_a_relocation_rephases_the_grid_with_one_line(caplog) -> None:
    ring, source, clock = make()
    source.sink(ClockReading(120.0, 0.0, ring.t, True))
    clock.update()
    ring.advance(1.0)
    with caplog.at_level(logging.INFO, "steerbridge.clock"):
        source.sink(ClockReading(120.0, 16.0, ring.t, True))  # two beats expected: a locate
        snap = clock.update()
    assert clock.relocations == 1 and snap.epoch == 2
    assert snap.grid.beat_at(ring.reads[-2][0]) == 16
    assert [r.message for r in caplog.records if "re-phases" in r.message] != []
    source.sink(ClockReading(120.0, 16.02, ring.t, True, relocated=True))  # small, but the source says so
    clock.update()
    assert clock.relocations == 2


def test_a_tempo_change_is_a_new_segment_on_the_readings_sample() -> None:
    ring, source, clock = make()
    source.sink(ClockReading(120.0, 0.0, ring.t, True))
    clock.update()
    ring.advance(1.0)
    source.sink(ClockReading(90.0, 2.0, ring.t, True))
    snap = clock.update()
    assert snap.grid.last.bpm == 90 and snap.grid.last.sample == ring.reads[-2][0]
    assert clock.status()["bpm"] == 90.0


def test_a_stale_source_is_one_line_plays_on_and_its_return_one_more(caplog) -> None:
    ring, source, clock = make(timeout_s=0.5)
    source.sink(ClockReading(140.0, 0.0, ring.t, True))
    clock.update()
    with caplog.at_level(logging.INFO, "steerbridge.clock"):
        for _ in range(200):  # two seconds of silence from the source
            ring.advance(0.01)
            snap = clock.update()
        assert snap.stale and snap.playing and snap.bpm == 140
        assert clock.status()["health"]["stale"] is True and clock.status()["health"]["age_s"] >= 2.0
        for _ in range(100):  # back: a reading every 10 ms for a second
            source.sink(ClockReading(140.0, float(snap.grid.beat_at(ring.reads[-2][0])), ring.t, True))
            ring.advance(0.01)
            snap = clock.update()
    gone = [r for r in caplog.records if "no reading" in r.message]
    back = [r for r in caplog.records if "is back" in r.message]
    assert len(gone) == 1 and len(back) == 1 and not snap.stale


def test_readings_wait_for_the_reader_to_move() -> None:
    ring, source = SimRing(), FakeSource()
    clock = MusicalClock(source, ring, RATE, 0.0, now=lambda: ring.t)
    clock.start()
    source.sink(ClockReading(120.0, 0.0, ring.t, True))
    assert clock.update().grid is None  # nothing has left the reader: no time maps to a counter
    ring.advance(0.5)
    snap = clock.update()
    assert snap.grid is not None and snap.playing


def test_the_grid_has_one_owner_and_the_sink_takes_any_thread() -> None:
    ring, source, clock = make()
    clock.update()
    sent = threading.Thread(target=lambda: source.sink(ClockReading(120.0, 0.0, ring.t, True)))
    sent.start()
    sent.join()
    failed: list[BaseException] = []

    def other() -> None:
        try:
            clock.update()
        except RuntimeError as exc:
            failed.append(exc)
    thread = threading.Thread(target=other, name="intruder")
    thread.start()
    thread.join()
    assert failed and "one owner" in str(failed[0])
    assert clock.update().grid is not None


def test_stopped_holds_the_beat_and_play_rephases() -> None:
    ring, source, clock = make()
    source.sink(ClockReading(120.0, 6.0, ring.t, False))
    snap = clock.update()
    assert not snap.playing and snap.bar_beat(0) == (2, 3.0)
    assert snap.next_boundary(1234, Quantize("bar")) == 1234  # no bar line comes while stopped
    ring.advance(0.3)
    source.sink(ClockReading(120.0, 6.0, ring.t, True))
    snap = clock.update()
    heard = ring.reads[-2][0]
    assert snap.playing and snap.epoch == 1
    assert snap.next_boundary(heard, Quantize("bar")) == heard + RATE  # bar 3 is two beats on


# --- the told sources -----------------------------------------------------------------
class Clockwork:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def told(cls):
    now = Clockwork()
    got: list[ClockReading] = []
    source = cls(SyncOptions(bpm=127.3, meter=Meter(7, 8)), now=now)
    source.start(got.append)
    return source, now, got


def test_the_sources_are_registered_and_internal_is_the_default_tempo() -> None:
    assert {"internal", "osc"} <= set(SOURCES)
    assert isinstance(open_source("internal", SyncOptions()), InternalClock)
    assert isinstance(open_source("osc", SyncOptions()), OscTransport)
    with pytest.raises(ClockError, match="unknown clock source 'nope'"):
        open_source("nope", SyncOptions())


def test_internal_clock_tempo_play_stop_and_locate() -> None:
    source, now, got = told(InternalClock)
    assert got[-1] == ClockReading(127.3, 0.0, 50.0, True, Meter(7, 8))
    now.t += 60.0
    source.request_tempo(60.0)
    assert got[-1].beat == pytest.approx(127.3) and got[-1].bpm == 60.0
    now.t += 2.0
    source.request_playing(False)
    assert got[-1].beat == pytest.approx(129.3) and not got[-1].playing
    now.t += 5.0
    source.request_playing(True)
    assert got[-1].beat == pytest.approx(129.3) and got[-1].playing  # stopped means the song waits
    source.request_beat(0.0)
    assert got[-1].beat == 0.0 and got[-1].relocated
    with pytest.raises(ClockError):
        source.request_tempo(0.0)
    assert source.timeout_s is None


def test_osc_source_takes_reports_and_counts_a_silent_sender_gone() -> None:
    source, now, got = told(OscTransport)
    assert source.timeout_s is None  # a patch that only sets the tempo is never "gone"
    source.request_tempo(120.0)
    now.t += 0.5
    source.request_beat(1.0)
    assert got[-1].beat == 1.0 and not got[-1].relocated  # a report: the clock smooths it
    assert source.timeout_s == pytest.approx(2.0)
    source.request_playing(False)
    assert not got[-1].playing
    assert Fraction(got[-1].beat) == 1
