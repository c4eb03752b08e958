"""``--sync link``: Ableton Link, through LinkPython-extern (the ``link`` module).

Link is a session of peers on the local network sharing a tempo, a beat timeline and a
phase over a quantum (here one bar of ``--meter``, or ``SyncOptions.link_quantum``
beats), and, with start/stop sync, whether the music plays. Every peer may change the
tempo or the play state; so may a performer here (``/transport/bpm``, play, stop).

Why LinkPython-extern and not aalink (both measured, see benchmarks/RESULTS.md): its
session state is read at an explicit time of Link's clock (``beatAtTime``), which a
poller thread pairs with ``time.monotonic()``; aalink wants a running asyncio loop (its
``loop`` argument is deprecated) and keeps a core busier while idle.

A poller thread reads the session every ``POLL_S`` and hands on a reading; it logs once
when the last peer leaves (the session plays on at its tempo: that is Link's own rule)
and once when peers come back.

Link's beats are quarter notes (as a DAW counts its tempo); a reading's beats are of
the meter's unit, so in 7/8 the reading's tempo is twice Link's and a bar is 3.5 of
Link's beats. Link finds its peers by UDP multicast: only ``serve --sync link`` joins.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .source import ClockError, ClockReading, ReadingSink, SyncOptions

log = logging.getLogger("steerbridge.clock")

POLL_S = 0.02  # a reading this often: well inside a frame of audio
RELOCATE_BEATS = 0.01  # the timeline moved by more than this between two polls: a new timeline


class LinkSource:
    name = "link"
    timeout_s: float | None = 1.0  # the session is local and never goes quiet; this notices a dead poller

    def __init__(self, options: SyncOptions) -> None:
        try:
            import link
        except ImportError:
            raise ClockError("--sync link needs LinkPython-extern (pip install LinkPython-extern)") from None
        self.meter = options.meter
        self.per_quarter = self.meter.beat_unit / 4  # beats of the meter's unit in one of Link's beats
        self.quantum = options.link_quantum or self.meter.beats_per_bar / self.per_quarter
        self._link: Any = link.Link(options.bpm / self.per_quarter)
        self._lock = threading.Lock()  # Link's app session state: captured and committed whole
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: ReadingSink | None = None
        self._last: ClockReading | None = None
        self._peers = 0

    # --- lifecycle --------------------------------------------------------------------
    def start(self, sink: ReadingSink) -> None:
        self._sink = sink
        self._link.startStopSyncEnabled = True
        self._link.enabled = True
        log.info("Link: joined (quantum %g beats); peers on this network share its tempo", self.quantum)
        self._thread = threading.Thread(target=self._poll, name="link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._link.enabled = False

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            reading = self.read()
            self._count_peers()
            sink = self._sink
            if sink is not None:
                sink(reading)

    def read(self) -> ClockReading:
        """The session now: its tempo, beat and play state, at this ``time.monotonic()``."""
        with self._lock:
            state = self._link.captureAppSessionState()
            micros = self._link.clock().micros()
            at = time.monotonic()
        tempo = state.tempo()
        beat = state.beatAtTime(micros, self.quantum) * self.per_quarter
        bpm = tempo * self.per_quarter
        last = self._last
        relocated = last is not None and abs(last.beat + (at - last.at) * last.bpm / 60 - beat) > RELOCATE_BEATS
        reading = ClockReading(bpm, beat, at, state.isPlaying(), self.meter, relocated=relocated)
        self._last = reading
        return reading

    def _count_peers(self) -> None:
        peers = int(self._link.numPeers())
        if peers != self._peers:
            if peers == 0:
                log.warning("Link: the last peer left; the session plays on at %.2f BPM",
                            self._last.bpm if self._last else 0.0)
            elif self._peers == 0:
                log.info("Link: %d peer%s in the session", peers, "" if peers == 1 else "s")
            self._peers = peers

    # --- what a performer may ask ---------------------------------------------------------
    def health(self) -> dict[str, float | int | str | None]:
        return {"peers": int(self._link.numPeers()), "quantum": self.quantum}

    def _change(self, change: Any) -> None:
        with self._lock:
            state = self._link.captureAppSessionState()
            change(state, self._link.clock().micros())
            self._link.commitAppSessionState(state)

    def request_tempo(self, bpm: float) -> None:
        if not 20.0 <= bpm / self.per_quarter <= 999.0:  # Link's own range
            raise ClockError(f"Link's tempo is 20 to 999 BPM; {bpm:g} is outside it")
        self._change(lambda state, now: state.setTempo(bpm / self.per_quarter, now))

    def request_playing(self, playing: bool) -> None:
        if playing:  # start on a bar line: beat 0 of the quantum at the moment play begins
            self._change(lambda state, now: state.setIsPlayingAndRequestBeatAtTime(True, now, 0.0, self.quantum))
        else:
            self._change(lambda state, now: state.setIsPlaying(False, now))

    def request_beat(self, beat: float) -> None:
        # With peers, Link keeps the session's phase: the beat lands on the nearest one in phase.
        self._change(lambda state, now: state.requestBeatAtTime(beat / self.per_quarter, now, self.quantum))
