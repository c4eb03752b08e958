"""The musical clock: the one owner of the bar grid, placed where the listener is.

A source hands readings to ``MusicalClock``'s sink from its own thread; the sink only
appends to a deque (it never blocks, never takes a lock the engine holds). The engine
thread, the grid's owner, calls ``update`` once a loop: it places each reading on the
output's ring counters and publishes a new frozen ``ClockSnapshot`` (one attribute
assignment), which any thread may read.

Placing a reading: the ring's reader logs when blocks left it (``Ring.reads``); a sample
counter ``c`` leaves at about the time its block did, and the listener hears it
``latency_s`` later. So the reading's moment ``at`` falls on counter
``c = block start + (at - latency_s - block time) * rate``. The grid is in those
counters: "bar and beat at output sample N" is one lookup.

Jitter: a reading that agrees with the grid within ``jump_s`` nudges its phase by
``PHASE_GAIN`` of the difference (a first-order loop: jitter is averaged, a constant
offset is followed to the sample, so the grid never drifts from its source); a tempo
different from the grid's starts a new segment on the reading's sample. A reading
further off than ``jump_s``, or one the source marks ``relocated``, re-phases the grid
at once, with one log line. A source quiet for longer than its ``timeout_s`` is logged
once as gone; the grid plays on at the last tempo, and the first reading after it is
logged once as its return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Protocol

from .grid import Grid, Quantize, exact_bpm
from .source import ClockReading, ClockSource, Meter

log = logging.getLogger("steerbridge.clock")

#: Of each reading's phase error, the part the grid takes (the rest is taken as jitter).
PHASE_GAIN = Fraction(1, 8)
#: Phase errors below this (seconds) leave the grid alone: no new segment for nothing.
PHASE_DEADBAND_S = 0.0005
#: A reading further than this from the grid (seconds) is a jump: the grid re-phases.
JUMP_S = 0.1
#: Denominator the phase-corrected beat is rounded to (a correction needs no more).
PHASE_DENOMINATOR = 1 << 24


class ReadLog(Protocol):
    """What the clock needs of the ring: the reader's log of (counter after a block, time)."""

    reads: deque[tuple[int, float]]


@dataclass(frozen=True)
class ClockSnapshot:
    """The clock at one moment, frozen. ``grid`` is None until the first reading is placed.
    While stopped the grid holds the beat the transport stopped at (``stopped_beat``).
    ``epoch`` grows at every re-phase (play, relocation), so a reader can tell."""

    source: str
    grid: Grid | None
    playing: bool
    meter: Meter
    bpm: Fraction
    stopped_beat: Fraction | None = None
    epoch: int = 0
    stale: bool = False

    def next_boundary(self, sample: int | Fraction, quantize: Quantize) -> Fraction:
        """Where a change quantised by ``quantize`` lands, at or after ``sample``; the sample
        itself when the transport is stopped or no grid is placed yet (no bar line comes)."""
        if self.grid is None or not self.playing:
            return Fraction(sample)
        return self.grid.next_boundary(sample, quantize)

    def bar_beat(self, sample: int | Fraction) -> tuple[int, float] | None:
        """(bar from 1, beat from 1.0 in the bar) heard at ``sample``; None with no grid."""
        if self.grid is None:
            return None
        if not self.playing and self.stopped_beat is not None:
            per_bar = self.meter.beats_per_bar
            bar = self.stopped_beat // per_bar
            return int(bar) + 1, float(self.stopped_beat - bar * per_bar + 1)
        position = self.grid.position(sample)
        return position.bar, float(position.beat)


class MusicalClock:
    """The grid's one owner (see the module docstring). ``update`` belongs to one thread
    (the first to call it: the engine's); a call from another raises. The sink, ``status``,
    ``snapshot`` and the ``request_*`` pass-throughs are safe from any thread."""

    def __init__(self, source: ClockSource, ring: ReadLog, rate: int, latency_s: float, *,
                 meter: Meter | None = None, bpm: float = 120.0, jump_s: float = JUMP_S,
                 now: Callable[[], float] = time.monotonic, latency_of: Callable[[], float] | None = None) -> None:
        self.source = source
        self.ring = ring
        self.rate = int(rate)
        self.latency_s = float(latency_s)
        #: Read at every update when given: an output's latency can change during a set (a DAW
        #: connecting to our JACK ports adds its own), and the grid must stay where it is heard.
        self.latency_of = latency_of
        self.jump_s = jump_s
        self._now = now
        self._inbox: deque[tuple[ClockReading, float]] = deque()  # (reading, arrival): the sink's, lock-free
        self._pending: ClockReading | None = None  # a reading waiting for the reader to move
        self.snapshot = ClockSnapshot(source.name, None, False, meter or Meter(), exact_bpm(bpm))
        self._last_arrival: float | None = None
        self._started = now()
        self._owner: int | None = None
        self.readings = 0
        self.relocations = 0

    # --- lifecycle and the sink (the source's thread) --------------------------------
    def start(self) -> None:
        self._started = self._now()
        self.source.start(self.sink)

    def stop(self) -> None:
        self.source.stop()

    def sink(self, reading: ClockReading) -> None:
        """Where the source hands its readings: an append, nothing more."""
        self._inbox.append((reading, self._now()))

    # --- the owner's side (the engine thread) ----------------------------------------
    def update(self) -> ClockSnapshot:
        """Place every reading received since the last call; note a source gone or back."""
        self._check_owner()
        now = self._now()
        if self.latency_of is not None:
            self.latency_s = float(self.latency_of())
        snap = self.snapshot
        while self._inbox:
            reading, arrived = self._inbox.popleft()
            self.readings += 1
            if snap.stale:
                log.info("clock source %s is back (%.1f BPM)", snap.source, reading.bpm)
                snap = replace(snap, stale=False)
            self._last_arrival = arrived
            if self._pending is not None and self._pending.relocated:
                reading = replace(reading, relocated=True)  # a jump among readings held back is still a jump
            self._pending = reading
        if self._pending is not None:  # placed once the reader has carried audio
            counter = self.counter_at(self._pending.at)
            if counter is not None:
                snap = self._place(snap, self._pending, counter)
                self._pending = None
        timeout = self.source.timeout_s
        if timeout is not None and not snap.stale and now - (self._last_arrival or self._started) > timeout:
            since = "yet" if self._last_arrival is None else f"for {now - self._last_arrival:.1f} s"
            log.warning("clock source %s: no reading %s; playing on at %.2f BPM", snap.source, since, float(snap.bpm))
            snap = replace(snap, stale=True)
        self.snapshot = snap
        return snap

    def counter_at(self, at: float) -> int | None:
        """The ring counter a listener hears at monotonic time ``at``, from the last block
        that carried audio (a block's first sample left at its time); None before any did."""
        reads = list(self.ring.reads)
        for i in range(len(reads) - 1, 0, -1):
            block_start, (end, left) = reads[i - 1][0], reads[i]
            if end > block_start:
                return block_start + round((at - self.latency_s - left) * self.rate)
        return None

    def _place(self, snap: ClockSnapshot, r: ClockReading, counter: int) -> ClockSnapshot:
        beat = Fraction(round(r.beat * PHASE_DENOMINATOR), PHASE_DENOMINATOR)  # whole beats stay exact
        bpm = exact_bpm(r.bpm)
        if not r.playing:
            grid = snap.grid or Grid.start(self.rate, bpm, r.meter, sample=counter, beat=beat)
            if r.relocated and snap.stopped_beat is not None and beat != snap.stopped_beat:
                self._relocated(snap, r, "while stopped")
            if snap.playing:
                log.info("clock %s: stopped at bar %s", snap.source, _bar_text(beat, r.meter))
            return replace(snap, grid=grid, playing=False, stopped_beat=beat, bpm=bpm, meter=r.meter)
        if snap.grid is None or not snap.playing or r.relocated or r.meter != snap.meter:
            if snap.grid is not None and snap.playing:
                self._relocated(snap, r, "relocated" if r.relocated else f"meter {r.meter}")
            elif snap.grid is not None or r.beat:
                log.info("clock %s: playing from bar %s at %.2f BPM", snap.source, _bar_text(beat, r.meter), r.bpm)
            grid = Grid.start(self.rate, bpm, r.meter, sample=counter, beat=beat)
            return replace(snap, grid=grid, playing=True, stopped_beat=None, bpm=bpm, meter=r.meter,
                           epoch=snap.epoch + 1)
        grid = snap.grid
        error = beat - grid.beat_at(counter)
        if abs(error) * 60 / bpm > self.jump_s:
            self._relocated(snap, r, f"jumped {float(error):+.2f} beats")
            return replace(snap, grid=Grid.start(self.rate, bpm, r.meter, sample=counter, beat=beat), bpm=bpm,
                           epoch=snap.epoch + 1)
        if bpm != grid.last.bpm:
            grid = grid.with_tempo(counter, bpm)
        if abs(error) * 60 / bpm > PHASE_DEADBAND_S:
            nudged = grid.beat_at(counter) + error * PHASE_GAIN
            grid = grid.relocated(counter, Fraction(round(nudged * PHASE_DENOMINATOR), PHASE_DENOMINATOR))
        return replace(snap, grid=grid, bpm=bpm)

    def _relocated(self, snap: ClockSnapshot, r: ClockReading, why: str) -> None:
        self.relocations += 1
        log.info("clock %s: %s, to bar %s; the grid re-phases", snap.source, why, _bar_text(Fraction(r.beat), r.meter))

    def _check_owner(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError(f"MusicalClock.update from thread {threading.current_thread().name!r}: the grid has "
                               "one owner (the engine thread)")

    # --- any thread -----------------------------------------------------------------
    def heard_now(self) -> int | None:
        """The ring counter the listener hears at this moment."""
        return self.counter_at(self._now())

    def status(self) -> dict[str, Any]:
        """``/status/json``'s ``clock``."""
        snap = self.snapshot
        counter = self.heard_now()
        where = None if counter is None else snap.bar_beat(counter)
        health: dict[str, Any] = dict(self.source.health())
        health["age_s"] = None if self._last_arrival is None else round(self._now() - self._last_arrival, 3)
        health["stale"] = snap.stale
        return {"source": snap.source, "bpm": round(float(snap.bpm), 4), "bar": None if where is None else where[0],
                "beat": None if where is None else round(where[1], 4), "meter": str(snap.meter),
                "playing": snap.playing, "relocations": self.relocations, "health": health}


def _bar_text(beat: Fraction, meter: Meter) -> str:
    bar = beat // meter.beats_per_bar
    return f"{int(bar) + 1}.{float(beat - bar * meter.beats_per_bar) + 1:.2f}"
