"""JACK transport as a clock source: ``--sync jack`` follows it, ``--sync jack-master``
leads it.

``jack``: a poller thread of its own (``jack-clock``) reads ``transport_query()`` at a
steady rate and hands on one ``ClockReading`` per new JACK period: tempo, bar/beat/tick
and meter from the timebase master's BBT, rolling or stopped, and a relocation when the
frame jumps. Each reading's ``at`` is when that period's first sample is heard: JACK's
cycle time put on ``time.monotonic``, plus one period and the playback ports' latency
(the DAW renders a period ahead of the speakers, as our JACK output does), so the grid
lands where the listener is.

``jack-master``: the same, and steerbridge is the timebase master: JACK calls
``_timebase`` on its process thread to fill in BBT from our tempo map, so every client
following JACK transport (Ardour, Reaper, Bitwig, ``jack_transport``) follows our tempo.

A server that goes away (its shutdown callback, or a call that fails) is one log line;
the readings stop, so the clock counts the source stale after ``timeout_s`` and plays on
at the last tempo, and the poller tries to open a client again with a capped back-off
until the server is back, then says so in one line.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import jack

from steering_core.errors import UserError

from .jackclient import Backoff, cycle_start_usecs, monotonic_offset, open_client, server_label, speakers_latency
from .source import ClockError, ClockReading, Meter, ReadingSink, SyncOptions

log = logging.getLogger("steerbridge.clock.jack")

#: How often the poller reads the transport: a few times per period at usual sizes, so a
#: reading reaches the clock soon after JACK's cycle starts.
POLL_S = 0.005
#: JACK ticks per beat written by our timebase master (the common choice, Ardour's too).
TICKS_PER_BEAT = 1920.0
#: Tempi a performer may ask of ``jack-master``.
TEMPO_RANGE = (20.0, 400.0)


def bbt_beats(pos: dict[str, Any]) -> float:
    """Beats since bar 1 beat 1 from JACK's BBT (bar and beat count from 1)."""
    per_bar = float(pos["beats_per_bar"])
    return (int(pos["bar"]) - 1) * per_bar + (int(pos["beat"]) - 1) + float(pos["tick"]) / float(pos["ticks_per_beat"])


def bbt_meter(pos: dict[str, Any], fallback: Meter) -> Meter:
    try:
        return Meter(round(float(pos["beats_per_bar"])), round(float(pos["beat_type"])))
    except ClockError:
        return fallback


class TransportMotion:
    """Whether JACK's transport was relocated between two readings, told apart from the
    jitter of when its cycles woke and of when the poller read them.

    A rolling transport advances by exactly one period per cycle; a stopped or starting
    one stands. So a frame that moved otherwise (backwards, by a part of a period, or by
    more periods than the time since allows) was relocated; only the last test needs the
    time, and it allows for late polling."""

    #: A forward jump by whole periods shorter than this passes for late polling.
    JITTER_S = 0.1

    def __init__(self) -> None:
        self._last: tuple[float, int, bool, int] | None = None  # woke, frame, rolling, blocksize
        self.cycles = 0

    def cycle(self, woke: float, frame: int, rolling: bool, blocksize: int, rate: int) -> bool:
        """One new cycle seen (``woke``: its wake-up, in seconds): whether it relocated."""
        self.cycles += 1
        last, self._last = self._last, (woke, frame, rolling, blocksize)
        if last is None:
            return False
        last_woke, last_frame, last_rolling, last_blocksize = last
        moved = frame - last_frame
        if not last_rolling:
            return moved != 0
        if moved < 0 or (blocksize == last_blocksize and moved % blocksize):
            return True
        by_time = (woke - last_woke) * rate  # frames the time since allows (a stop may have cut it short)
        return moved > by_time + max(2 * blocksize, self.JITTER_S * rate)


class JackTransport:
    """``--sync jack``: follows JACK transport; the DAW (the timebase master) sets the tempo."""

    name = "jack"
    #: No new period for this long: the server is stuck or gone.
    timeout_s: float | None = 1.0

    def __init__(self, options: SyncOptions) -> None:
        self.options = options
        self.client_name = f"{options.jack_client}-clock"
        self._sink: ReadingSink | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jack-clock", daemon=True)
        self._gone = False  # set by JACK's shutdown callback: async-safe, a plain store
        self._last_cycle: tuple[int, jack.TransportState] | None = None  # the last reading's usecs and state
        self._motion = TransportMotion()
        self._latency_frames = 0
        self._latency_checked = 0.0
        self._playing = False
        # The last BBT seen (frame, beat, bpm, meter), and the one held while there is none.
        self._bbt: tuple[int, float, float, Meter] | None = None
        self._held: tuple[int, float, float, Meter] | None = None
        self.readings = 0
        self.reconnects = 0
        self.last_reading_at: float | None = None
        self.client: jack.Client | None = None
        self.client = self._connect()  # no server at all: one line before the set starts

    # --- the connection --------------------------------------------------------------
    def _connect(self) -> jack.Client:
        try:
            client = open_client(self.client_name)
        except UserError as exc:
            raise ClockError(f"--sync {self.name}: {exc}") from None
        self._gone = False
        client.set_shutdown_callback(self._on_shutdown)
        self._prepare(client)
        client.activate()
        self._last_cycle = None
        self._motion = TransportMotion()
        self._latency_checked = 0.0
        if self._bbt is not None:  # a new server counts frames from 0; the tempo carries on
            self._bbt = (0, 0.0, self._bbt[2], self._bbt[3])
            self._held = None
        return client

    def _prepare(self, client: jack.Client) -> None:
        """What a source sets on a fresh client before it is activated."""

    def _on_shutdown(self, _status: Any, _reason: str) -> None:
        self._gone = True

    def _drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(jack.JackError):  # the server is gone: nothing left to close
                client.close()

    # --- the poller ------------------------------------------------------------------
    def start(self, sink: ReadingSink) -> None:
        self._sink = sink
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._drop()

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            client = self.client
            if client is None or self._gone:
                if client is not None:
                    log.warning("the %s went away: JACK transport lost, playing on at the last tempo; "
                                "reconnecting", server_label())
                    self._drop()
                self._stop.wait(backoff.next_delay())
                try:
                    self.client = self._connect()
                except ClockError:
                    continue
                self.reconnects += 1
                backoff.reset()
                log.info("the %s is back: following JACK transport again", server_label())
                continue
            try:
                reading = self._read(client)
            except jack.JackError:
                self._gone = True
                continue
            if reading is not None and self._sink is not None:
                self.readings += 1
                self.last_reading_at = time.monotonic()
                self._sink(reading)
            self._stop.wait(POLL_S)

    def _listener_latency_frames(self, client: jack.Client) -> int:
        """A period plus the speakers' latency, looked up again every second (the graph
        and the period size may change during a set)."""
        now = time.monotonic()
        if now - self._latency_checked >= 1.0:
            self._latency_frames = client.blocksize + speakers_latency(client)
            self._latency_checked = now
        return self._latency_frames

    def _read(self, client: jack.Client) -> ClockReading | None:
        state, pos = client.transport_query()
        usecs, frame, rate = int(pos["usecs"]), int(pos["frame"]), int(pos["frame_rate"])
        if self._last_cycle == (usecs, state):
            return None  # the same period as the last reading
        self._last_cycle = (usecs, state)
        # STARTING is JACK waiting for slow clients, on a start or on a locate while
        # rolling: the transport keeps the state it had, so a locate is no stop and play.
        if state != jack.STARTING:
            self._playing = state == jack.ROLLING
        started, offset = cycle_start_usecs(client, usecs), monotonic_offset()
        if started is None or offset is None:
            self._last_cycle = None  # JACK moved on, or this thread was held up: read again
            return None
        relocated = self._motion.cycle(usecs / 1e6, frame, state == jack.ROLLING, client.blocksize, rate)
        if self._motion.cycles == 1:
            relocated = self.reconnects > 0  # a new server: its transport is not the old one's
        bpm, beat, meter = self._musical_position(pos, frame, rate)
        at = started / 1e6 + offset + self._listener_latency_frames(client) / rate
        return ClockReading(bpm=bpm, beat=beat, at=at, playing=self._playing, meter=meter, relocated=relocated)

    def _musical_position(self, pos: dict[str, Any], frame: int, rate: int) -> tuple[float, float, Meter]:
        """Tempo, beat and meter from the timebase master's BBT; without one, the last
        BBT's tempo carried on over the frames (or --bpm from frame 0, if there never was
        one), so a master that quits changes nothing audible."""
        if "bar" in pos:
            bpm, beat, meter = float(pos["beats_per_minute"]), bbt_beats(pos), bbt_meter(pos, self.options.meter)
            if self._held is not None:
                log.info("JACK transport has a timebase master (%g BPM)", bpm)
            self._bbt = (frame, beat, bpm, meter)
            self._held = None
            return bpm, beat, meter
        if self._held is None:
            self._held = self._bbt or (0, 0.0, self.options.bpm, self.options.meter)
            if self._bbt is None:
                log.warning("JACK transport has no timebase master (no tempo from the DAW): counting beats from "
                            "its frames at %g BPM", self.options.bpm)
            else:
                log.warning("JACK transport lost its timebase master: holding %g BPM", self._held[2])
        anchor_frame, anchor_beat, bpm, meter = self._held
        return bpm, anchor_beat + (frame - anchor_frame) / rate * bpm / 60.0, meter

    # --- health and requests ---------------------------------------------------------
    def health(self) -> dict[str, float | int | str | None]:
        last = self.last_reading_at
        client = self.client
        return {
            "server": "gone" if client is None or self._gone else "connected",
            "age_s": None if last is None else round(time.monotonic() - last, 3),
            "readings": self.readings,
            "reconnects": self.reconnects,
            "latency_ms": round(1000 * self._latency_frames / client.samplerate, 1) if client and not self._gone else None,
        }

    def _follows(self) -> ClockError:
        return ClockError("--sync jack follows JACK transport: the DAW (the timebase master) sets the tempo and "
                          "the transport; use --sync jack-master to lead it")

    def request_tempo(self, bpm: float) -> None:
        raise self._follows()

    def request_playing(self, playing: bool) -> None:
        raise self._follows()

    def request_beat(self, beat: float) -> None:
        raise self._follows()


@dataclass(frozen=True)
class TempoMap:
    """Where each beat falls on JACK's transport frames: piecewise constant tempo, one
    anchor (frame, beat, bpm) per change, so a locate anywhere finds the beat it had.
    Immutable: the timebase callback reads one map while a performer's change builds the
    next, and the swap is one attribute store."""

    rate: int
    frames: tuple[int, ...] = (0,)
    beats: tuple[float, ...] = (0.0,)
    bpms: tuple[float, ...] = (120.0,)

    def _anchor(self, frame: int) -> int:
        return max(0, bisect.bisect_right(self.frames, frame) - 1)

    def beat_at(self, frame: int) -> float:
        i = self._anchor(frame)
        return self.beats[i] + (frame - self.frames[i]) / self.rate * self.bpms[i] / 60.0

    def bpm_at(self, frame: int) -> float:
        return self.bpms[self._anchor(frame)]

    def frame_at(self, beat: float) -> int:
        i = max(0, bisect.bisect_right(self.beats, beat) - 1)
        return max(0, round(self.frames[i] + (beat - self.beats[i]) * 60.0 / self.bpms[i] * self.rate))

    def with_tempo(self, frame: int, bpm: float) -> TempoMap:
        """This map up to ``frame``, then ``bpm`` from there on (later changes dropped)."""
        frame = max(0, frame)
        keep = bisect.bisect_left(self.frames, frame)  # the anchors before it
        return TempoMap(self.rate, (*self.frames[:keep], frame), (*self.beats[:keep], self.beat_at(frame)),
                        (*self.bpms[:keep], bpm))


class JackMaster(JackTransport):
    """``--sync jack-master --bpm N``: steerbridge is JACK's timebase master."""

    name = "jack-master"

    def __init__(self, options: SyncOptions) -> None:
        self.tempo: TempoMap | None = None
        self.callback_errors = 0
        super().__init__(options)

    def _prepare(self, client: jack.Client) -> None:
        if self.tempo is None or self.tempo.rate != client.samplerate:
            self.tempo = TempoMap(client.samplerate, bpms=(self.options.bpm,))
        client.set_timebase_callback(self._timebase, conditional=False)

    def _timebase(self, _state: int, _blocksize: int, pos: Any, _new_pos: bool) -> None:
        # JACK's process thread: arithmetic on the current map and stores into pos; never raises.
        try:
            tempo = self.tempo
            assert tempo is not None
            meter = self.options.meter
            beat = tempo.beat_at(int(pos.frame))
            bar, in_bar = divmod(beat, meter.beats_per_bar)
            whole = int(in_bar)
            pos.valid = pos.valid | jack._lib.JackPositionBBT
            pos.bar = int(bar) + 1
            pos.beat = whole + 1
            pos.tick = min(int((in_bar - whole) * TICKS_PER_BEAT), int(TICKS_PER_BEAT) - 1)
            pos.bar_start_tick = bar * meter.beats_per_bar * TICKS_PER_BEAT
            pos.beats_per_bar = float(meter.beats_per_bar)
            pos.beat_type = float(meter.beat_unit)
            pos.ticks_per_beat = TICKS_PER_BEAT
            pos.beats_per_minute = tempo.bpm_at(int(pos.frame))
        except Exception:
            self.callback_errors += 1

    def _live_client(self) -> jack.Client:
        client = self.client
        if client is None or self._gone:
            raise ClockError(f"--sync jack-master: the {server_label()} is gone; try again once it is back")
        return client

    def request_tempo(self, bpm: float) -> None:
        low, high = TEMPO_RANGE
        if not low <= bpm <= high:
            raise ClockError(f"a tempo is {low:g} to {high:g} BPM, not {bpm:g}")
        client = self._live_client()
        tempo = self.tempo
        assert tempo is not None
        self.tempo = tempo.with_tempo(client.transport_frame, float(bpm))

    def request_playing(self, playing: bool) -> None:
        client = self._live_client()
        if playing:
            client.transport_start()
        else:
            client.transport_stop()

    def request_beat(self, beat: float) -> None:
        client = self._live_client()
        tempo = self.tempo
        assert tempo is not None
        client.transport_frame = tempo.frame_at(max(0.0, beat))

    def health(self) -> dict[str, float | int | str | None]:
        return {**super().health(), "timebase_errors": self.callback_errors}
