"""MIDI clock (``--sync midi``): the tempo estimator on synthetic ticks (deterministic), the
transport's rules on messages handed straight in, and the whole source on a real JACK
server, with a test "DAW" sending clock from an rtmidi virtual port with ±1 ms of jitter."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.clock.midi_clock import CLOCK, CONTINUE, SONG_POSITION, START, STOP, MidiClockSource
from bridge.clock.source import SOURCES, ClockError, ClockReading, Meter, SyncOptions, open_source
from bridge.clock.tick_tempo import TICKS_PER_QUARTER, TickTempo
from tests.realparts import Readings, wait_for

JITTER_S = 0.001


def tick_times(bpm: float, count: int, rng: random.Random, *, start: float = 100.0, grain: float = 0.0) -> list[float]:
    """``count`` ticks at ``bpm`` with ±1 ms of uniform jitter, rounded up to ``grain``
    (the period a JACK back end stamps in) when given."""
    period = 60.0 / bpm / TICKS_PER_QUARTER
    times = [start + i * period + rng.uniform(-JITTER_S, JITTER_S) for i in range(count)]
    return [math.ceil(t / grain) * grain for t in times] if grain else times


# --- the estimator, on synthetic arrival times -------------------------------------------
@pytest.mark.parametrize(("grain", "beats"), [(0.0, 2), (256 / 48000, 2), (1024 / 48000, 4)],
                         ids=["exact", "jack256", "jack1024"])
@pytest.mark.parametrize("bpm", [90.0, 128.0, 174.0])
def test_tempo_within_half_a_percent_after_two_beats(bpm, grain, beats) -> None:
    """With ±1 ms of jitter, after two beats; where JACK stamps ticks in 21 ms cycles (1024
    frames), rounding swamps the jitter and it takes a bar."""
    worst = 0.0
    for seed in range(40):
        tempo = TickTempo()
        for t in tick_times(bpm, beats * TICKS_PER_QUARTER, random.Random(seed), grain=grain):
            tempo.add(t)
        assert tempo.bpm is not None
        worst = max(worst, abs(tempo.bpm / bpm - 1))
    assert worst < 0.005, worst


def test_a_line_through_the_ticks_beats_the_mean_interval() -> None:
    """Why a least-squares line: the mean interval (first and last tick alone) keeps more jitter."""
    line, mean = [], []
    for seed in range(100):
        times = tick_times(128.0, 48, random.Random(seed))
        tempo = TickTempo()
        for t in times:
            tempo.add(t)
        assert tempo.bpm is not None
        line.append(abs(tempo.bpm / 128 - 1))
        mean.append(abs(60 / TICKS_PER_QUARTER / ((times[-1] - times[0]) / 47) / 128 - 1))
    assert sum(line) < 0.6 * sum(mean)


@pytest.mark.parametrize("grain", [0.0, 256 / 48000, 1024 / 48000], ids=["exact", "jack256", "jack1024"])
def test_a_tempo_jump_is_followed_within_a_bar(grain) -> None:
    bar = 4 * TICKS_PER_QUARTER
    for seed in range(20):
        rng = random.Random(seed)
        before = tick_times(120.0, 2 * bar, rng)
        after = tick_times(140.0, 2 * bar, rng, start=before[-1] + 60 / 140 / TICKS_PER_QUARTER)
        tempo = TickTempo()
        for i, t in enumerate([*before, *after]):
            tempo.add(math.ceil(t / grain) * grain if grain else t)
            if i >= len(before) + bar - 1:
                assert tempo.bpm == pytest.approx(140.0, rel=0.005), (seed, i - len(before))
        # the jump detector did it (in JACK's cycles the window's own slide may be as quick)
        assert tempo.jumps >= 1 or grain > 0


def test_a_stall_then_a_burst_is_not_a_tempo_change() -> None:
    """Ticks held up 100 ms by a busy machine, then released at once, then on time again."""
    times = tick_times(120.0, 200, random.Random(3))
    for i in range(100, 105):
        times[i] = times[105] - 1e-4 * (105 - i)
    tempo = TickTempo()
    for t in times:
        tempo.add(t)
    assert tempo.jumps == 0 and tempo.bpm == pytest.approx(120.0, rel=0.002)


def test_ticks_without_their_own_time_count_but_stay_off_the_line() -> None:
    tempo = TickTempo()
    times = tick_times(100.0, 60, random.Random(5))
    for i, t in enumerate(times):
        tempo.add(t + (5.0 if 30 <= i < 35 else 0.0), timed=not 30 <= i < 35)
    assert tempo.bpm == pytest.approx(100.0, rel=0.002)
    assert tempo.tick_time == pytest.approx(times[-1], abs=0.002)


def test_lost_ticks_are_found_from_the_line_and_counted() -> None:
    times = tick_times(128.0, 120, random.Random(4))
    kept = [t for i, t in enumerate(times) if i not in (50, 70, 71, 90)]
    tempo = TickTempo()
    for t in kept:
        tempo.add(t)
    assert tempo.lost == 4 and tempo.bpm == pytest.approx(128.0, rel=0.002)
    assert tempo.tick_time == pytest.approx(times[-1], abs=0.002)


@pytest.mark.parametrize("bpm", [90.0, 128.0, 174.0])
def test_a_tick_lost_in_a_jack_cycle_is_counted_and_the_tempo_holds(bpm) -> None:
    """Real stamps come a JACK cycle at a time (256 frames here): their scatter about the
    line is the cycle's rounding, several times the jitter, so a lost tick must be told
    from rounding by that scatter and not by the line's rms alone."""
    for seed in range(40):
        rng = random.Random(seed)
        times = tick_times(bpm, 4 * TICKS_PER_QUARTER, rng, grain=256 / 48000)
        lost = rng.randrange(2 * TICKS_PER_QUARTER, 3 * TICKS_PER_QUARTER)
        tempo = TickTempo()
        for i, t in enumerate(times):
            if i != lost:
                tempo.add(t)
        assert tempo.lost == 1 and tempo.bpm == pytest.approx(bpm, rel=0.005), (seed, tempo.lost, tempo.bpm)


def test_a_clock_that_comes_back_after_a_pause_starts_a_new_line() -> None:
    tempo = TickTempo()
    for t in tick_times(90.0, 100, random.Random(1)):
        tempo.add(t)
    for t in tick_times(150.0, 48, random.Random(2), start=200.0):
        tempo.add(t)
    assert tempo.restarts == 1 and tempo.bpm == pytest.approx(150.0, rel=0.005)


# --- the transport's rules, messages handed straight in ------------------------------------
def fed_source(meter: Meter | None = None) -> tuple[MidiClockSource, list[ClockReading], list[float]]:
    source = MidiClockSource(SyncOptions(midi_in="nowhere", meter=meter or Meter()))
    readings: list[ClockReading] = []
    source._sink = readings.append
    clock = [0.0]
    return source, readings, clock


def ticks_in(source: MidiClockSource, clock: list[float], count: int, bpm: float = 120.0) -> None:
    for _ in range(count):
        clock[0] += 60 / bpm / TICKS_PER_QUARTER
        source._received([CLOCK], clock[0], False)


def test_start_stop_continue_and_song_position_move_the_transport() -> None:
    source, readings, clock = fed_source()
    ticks_in(source, clock, 24)  # the DAW's clock runs while it is stopped: tempo, no position
    assert readings[-1].playing is False and readings[-1].beat == 0.0 and readings[-1].bpm == pytest.approx(120)
    source._received([START], clock[0], False)
    ticks_in(source, clock, 1)
    assert readings[-1].playing and readings[-1].beat == 0.0  # the first tick after Start is the downbeat
    ticks_in(source, clock, 48)
    assert readings[-1].beat == pytest.approx(48 / 24)
    source._received([STOP], clock[0], False)
    assert readings[-1].playing is False and readings[-1].beat == pytest.approx(49 / 24)
    ticks_in(source, clock, 10)
    assert readings[-1].beat == pytest.approx(49 / 24)  # stopped: held
    source._received([SONG_POSITION, 32, 0], clock[0], False)  # sixteenth 32 = quarter 8
    source._received([CONTINUE], clock[0], False)
    ticks_in(source, clock, 1)
    assert readings[-1].playing and readings[-1].beat == 8.0 and readings[-1].relocated
    ticks_in(source, clock, 1)
    assert not readings[-1].relocated
    source._received([START], clock[0], False)
    ticks_in(source, clock, 1)
    assert readings[-1].beat == 0.0 and readings[-1].relocated  # back to the top


def test_beats_are_of_the_meters_unit() -> None:
    source, readings, clock = fed_source(Meter(7, 8))
    source._received([START], clock[0], False)
    ticks_in(source, clock, 49, bpm=100.0)
    assert readings[-1].bpm == pytest.approx(200.0, rel=1e-3)  # eighth notes a minute
    assert readings[-1].beat == pytest.approx(2 * 48 / 24) and readings[-1].meter == Meter(7, 8)


def test_a_follower_refuses_a_performers_tempo_and_needs_a_port() -> None:
    source = open_source("midi", SyncOptions(midi_in="x"))
    for ask in (lambda: source.request_tempo(100), lambda: source.request_playing(True),
                lambda: source.request_beat(0)):
        with pytest.raises(ClockError, match="MIDI clock sets"):
            ask()
    with pytest.raises(ClockError, match="--midi-in"):
        SOURCES["midi"](SyncOptions(midi_in="none"))


# --- the source on a real JACK server ----------------------------------------------------
@pytest.fixture(scope="module")
def jack_short_period(tmp_path_factory):
    """A JACK server of its own with a short cycle (rtmidi stamps MIDI once a cycle), the
    test process's clients pointed at it for this module only."""
    from tests.realparts import jack_server

    for env in jack_server(tmp_path_factory.mktemp("jack-clock"), period=256, tag="-clock", realtime=True):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def realtime_thread() -> Iterator[None]:
    """This thread on SCHED_FIFO (priority 10, as jackd's) for the block, where allowed."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):  # no rights: the ticks jitter more, the tolerances are the same
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, before[0], before[1])


class Daw:
    """A DAW's MIDI clock output: an rtmidi virtual port on JACK."""

    def __init__(self, name: str = "test-daw") -> None:
        import rtmidi

        self.out: Any = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name)
        self.out.open_virtual_port("clock")
        self.rng = random.Random(7)
        self.next_at: float | None = None

    def send(self, *message: int) -> None:
        self.out.send_message(list(message))

    def ticks(self, bpm: float, count: int) -> list[float]:
        """``count`` ticks at ``bpm``, each ±1 ms off its time; returns the times meant.
        Sent from a real-time thread where allowed, as a DAW's clock is, so that the jitter
        is the test's ±1 ms and not a busy machine's sleep."""
        with realtime_thread():
            return self._ticks(bpm, count)

    def _ticks(self, bpm: float, count: int) -> list[float]:
        period = 60.0 / bpm / TICKS_PER_QUARTER
        at = self.next_at if self.next_at is not None and self.next_at > time.monotonic() - 0.05 else time.monotonic()
        meant = []
        for _ in range(count):
            wait = at + self.rng.uniform(-JITTER_S, JITTER_S) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.send(CLOCK)
            meant.append(at)
            at += period
        self.next_at = at
        return meant

    def close(self) -> None:
        if self.out is not None:
            self.out.close_port()
            self.out.delete()
            self.out = None




@pytest.fixture
def daw_and_source(jack_short_period):
    daw = Daw()
    source = MidiClockSource(SyncOptions(midi_in="test-daw", midi_api="jack"))
    listener = Readings()
    source.start(listener)
    try:
        assert wait_for(lambda: source.health()["port"] is not None), "the source never found the DAW's port"
        yield daw, source, listener
    finally:
        source.stop()
        daw.close()


@pytest.mark.realtime
@pytest.mark.parametrize("bpm", [90.0, 128.0, 174.0])
def test_jack_midi_clock_tempo_after_two_beats(daw_and_source, bpm) -> None:
    daw, source, listener = daw_and_source
    daw.send(START)
    daw.ticks(bpm, 4 * TICKS_PER_QUARTER)
    assert wait_for(lambda: any(round(r.beat * 24) >= 95 for r in listener.since(0))), \
        (len(listener.readings), listener.readings[-1:], source.health())
    played = [r for r in listener.since(0) if r.playing]
    positions = [round(r.beat * 24) for r in played]
    # one reading per tick; a tick lost where the source's JACK client missed a cycle is
    # counted from the line, so the song position holds across it
    skipped = sorted(set(range(positions[0], 96)) - set(positions))
    assert positions == sorted(set(positions)) and len(skipped) == source.tempo.lost, (skipped, source.health())
    after_two = [r for r in played if r.beat >= 2.0]
    errors = [abs(r.bpm / bpm - 1) for r in after_two]
    assert max(errors) < 0.005, (max(errors), source.health())


@pytest.mark.realtime
def test_jack_midi_clock_follows_a_jump_within_a_bar(daw_and_source) -> None:
    daw, _, listener = daw_and_source
    bar = 4 * TICKS_PER_QUARTER
    daw.send(START)
    daw.ticks(120.0, 2 * bar)
    meant = daw.ticks(140.0, 2 * bar)
    assert wait_for(lambda: any(round(r.beat * 24) >= 16 * 24 - 1 for r in listener.since(0)))
    later = listener.since(meant[bar] - 0.005)
    assert later and all(r.bpm == pytest.approx(140.0, rel=0.005) for r in later), [r.bpm for r in later][:5]


@pytest.mark.realtime
def test_jack_midi_transport_start_stop_continue_and_song_position(daw_and_source) -> None:
    daw, source, listener = daw_and_source
    daw.ticks(120.0, 24)
    daw.send(START)
    daw.ticks(120.0, 48)
    assert wait_for(lambda: any(r.playing and round(r.beat * 24) >= 47 for r in listener.since(0)))
    daw.send(STOP)
    daw.ticks(120.0, 24)
    time.sleep(2 * source.timeout_s)  # the DAW stops its clock too: readings still say "stopped"
    with listener.lock:
        last_played = max(i for i, r in enumerate(listener.readings) if r.playing)
        still = listener.readings[last_played + 1:]
    assert listener.readings[last_played].beat == 47 / 24, [r.bpm for r in listener.readings]
    assert still and {r.beat for r in still} == {2.0} and not any(r.playing for r in still)
    assert time.monotonic() - max(r.at for r in still) < source.timeout_s
    daw.send(SONG_POSITION, 64, 0)  # sixteenth 64: quarter 16, bar 5
    daw.send(CONTINUE)
    resumed_at = time.monotonic()
    daw.ticks(120.0, 24)
    assert wait_for(lambda: any(r.playing for r in listener.since(resumed_at)))
    resumed = [r for r in listener.since(resumed_at) if r.playing]
    assert resumed[0].beat == 16.0 and resumed[0].relocated


@pytest.mark.realtime
def test_jack_midi_port_closed_mid_run_is_noticed_and_picked_up_again(daw_and_source, caplog) -> None:
    daw, source, listener = daw_and_source
    daw.send(START)
    daw.ticks(128.0, 48)
    daw.close()  # the DAW quits
    gone_at = time.monotonic()
    assert wait_for(lambda: source.health()["port"] is None), source.health()
    time.sleep(2 * source.timeout_s)
    assert not listener.since(gone_at + 0.1), "readings after the port went"
    assert "is gone" in caplog.text
    back = Daw()  # the DAW is back, same port name
    try:
        assert wait_for(lambda: source.health()["port"] is not None)
        back.send(START)
        returned_at = time.monotonic()
        back.ticks(100.0, 72)
        assert wait_for(lambda: any(r.beat >= 2.0 for r in listener.since(returned_at)))
        again = [r for r in listener.since(returned_at) if r.beat >= 2.0]
        assert all(r.bpm == pytest.approx(100.0, rel=0.005) for r in again), [round(r.bpm, 2) for r in again]
        assert source.health()["reconnects"] == 1
    finally:
        back.close()
