"""Clocks told by messages: ``internal`` (our own, at ``--bpm``) and ``osc`` (a DAW or a
patch sending ``/transport/bpm``, ``/transport/beat``, ``/transport/play|stop``).

Both keep one position (a beat at a monotonic time, a tempo, play or stop) and hand the
musical clock a reading each time a message changes it, from the thread that delivered
the message (the OSC control thread). Between messages they say nothing: the grid runs
on the output's own samples, exactly, which is the best an internal clock can be.

They differ in what a message means. To the internal clock, ``/transport/beat`` is a
locate (the performer moves the song position). To the OSC source it is the sender's
report of where its song is (AbletonOSC's beat listener sends one every beat): the
musical clock smooths it against the grid and re-phases only on a jump; and once beats
arrive, a sender that stops sending them is counted gone after ``STALE_BEATS`` beats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .grid import exact_bpm
from .source import ClockReading, Meter, ReadingSink, SyncOptions

#: Beats without a /transport/beat after which a sender that was sending them counts as gone.
STALE_BEATS = 4
#: The shortest such silence, in seconds (a fast tempo still allows a late packet).
STALE_MIN_S = 2.0


class ToldClock:
    """A position told by messages; see the module docstring. The ``request_*`` methods
    take a lock of this clock's own (never one the engine holds) and call the sink."""

    name = "told"
    locates = True  # /transport/beat is a locate (internal) or a position report (osc)

    def __init__(self, options: SyncOptions, *, now: Callable[[], float] = time.monotonic) -> None:
        self.meter: Meter = options.meter
        self._bpm = float(exact_bpm(options.bpm))
        self._beat = 0.0  # at self._at
        self._at = now()
        self._playing = True
        self._now = now
        self._sink: ReadingSink | None = None
        self._lock = threading.Lock()
        self.timeout_s: float | None = None
        self.messages = 0

    def start(self, sink: ReadingSink) -> None:
        with self._lock:
            self._sink = sink
            self._at = self._now()
            self._send(relocated=False)

    def stop(self) -> None:
        with self._lock:
            self._sink = None

    def health(self) -> dict[str, float | int | str | None]:
        return {"messages": self.messages}

    def beat_at(self, at: float) -> float:
        return self._beat + ((at - self._at) * self._bpm / 60.0 if self._playing else 0.0)

    def request_tempo(self, bpm: float) -> None:
        value = float(exact_bpm(bpm))  # a tempo outside 1..999 is one line, and nothing changes
        with self._lock:
            self._move_to(self._now())
            self._bpm = value
            self._send(relocated=False)

    def request_playing(self, playing: bool) -> None:
        with self._lock:
            self._move_to(self._now())
            self._playing = playing
            self._send(relocated=False)

    def request_beat(self, beat: float) -> None:
        with self._lock:
            self._move_to(self._now())
            self._beat = float(beat)
            if not self.locates:
                self.timeout_s = max(STALE_MIN_S, STALE_BEATS * 60.0 / self._bpm)
            self._send(relocated=self.locates)

    def _move_to(self, at: float) -> None:
        self.messages += 1
        self._beat, self._at = self.beat_at(at), at

    def _send(self, *, relocated: bool) -> None:
        if self._sink is not None:
            self._sink(ClockReading(self._bpm, self._beat, self._at, self._playing, self.meter, relocated))


class InternalClock(ToldClock):
    """``--sync internal`` (the default): our own clock at ``--bpm``, moved by ``/transport/*``."""

    name = "internal"
    locates = True


class OscTransport(ToldClock):
    """``--sync osc``: the tempo, position and transport a DAW or patch sends over OSC."""

    name = "osc"
    locates = False
