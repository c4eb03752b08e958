"""``--sync midi``: MIDI clock on the MIDI input (24 ticks a quarter note; start, stop,
continue, song position pointer), its tempo estimated from the ticks (``tick_tempo``).

The source opens the ``--midi-in`` port a second time, as a client of its own, rather
than sharing the knobs' input: it needs rtmidi's own delta times (which mido drops), it
must let timing messages through (the knobs' input need not), and it watches the port
and opens it again when it comes back (a DAW restarted, a cable pulled and put back),
all on its own thread, without touching the knobs. With ``--midi-in virtual`` it opens a
virtual port of its own, ``steerbridge-clock``: send the clock there.

Position: Start puts the song at its beginning and the next tick is beat 0; Stop holds
the position; Continue and a song position pointer (in sixteenths) resume from it, at
the next tick. Ticks while stopped keep the tempo estimate fresh. Each tick hands on a
reading at the tick's fitted time; while stopped by the DAW, a reading every
``STOPPED_EVERY_S`` says so, so that a stop is not taken for a lost clock. When the ticks
stop without a Stop, or the port goes, readings stop: the clock counts the source gone.
"""

from __future__ import annotations

import logging
import threading
import time

from ..live.midi import midi_backend, rtmidi_api
from ..live.midi_port import RawMidiInput
from .source import ClockError, ClockReading, ReadingSink, SyncOptions
from .tick_tempo import TICKS_PER_QUARTER, TickTempo

log = logging.getLogger("steerbridge.clock")

CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
TICKS_PER_SIXTEENTH = 6
WATCH_EVERY_S = 0.25  # how often the port is looked for, and a stopped transport said again
STOPPED_EVERY_S = WATCH_EVERY_S
CLIENT = "steerbridge-clock"


class MidiClockSource:
    name = "midi"
    timeout_s: float | None = 1.0  # the slowest tempo a set plays at ticks far more often than this

    def __init__(self, options: SyncOptions) -> None:
        if options.midi_in in (None, "", "none"):
            raise ClockError("--sync midi needs the port the clock arrives on: --midi-in <name or part of it> "
                             "(or --midi-in virtual, then send the clock to steerbridge-clock)")
        self.spec: str = options.midi_in
        self.meter = options.meter
        self.api_name = options.midi_api
        self.tempo = TickTempo()
        self._lock = threading.Lock()  # the transport below: rtmidi's thread writes, the watcher reads
        self._next_tick = 0  # the song position, in ticks, of the next tick
        self._playing = False
        self._stopped_by_daw = False
        self._relocated = False
        self._last_tick_at: float | None = None
        self._last_reading: ClockReading | None = None
        self._port: RawMidiInput | None = None
        self._sink: ReadingSink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.readings = 0
        self.reconnects = 0

    # --- lifecycle ------------------------------------------------------------------
    def start(self, sink: ReadingSink) -> None:
        self._sink = sink
        self._api = rtmidi_api(midi_backend(self.api_name))
        if not self._open():
            log.info("MIDI clock: no input matching %r yet; waiting for it", self.spec)
        self._thread = threading.Thread(target=self._watch, name="midi-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._close()

    def _open(self) -> bool:
        try:
            port = RawMidiInput(self.spec, self._received, api=self._api, client_name=CLIENT,
                                port_name="clock" if self.spec == "virtual" else None)
        except LookupError:
            return False
        with self._lock:
            self._port = port
            self.tempo.reset()
        log.info("MIDI clock: listening on %s", port.name)
        return True

    def _close(self) -> None:
        with self._lock:
            port, self._port = self._port, None
        if port is not None:
            port.close()

    def _present(self) -> bool:
        """Whether the port we are connected to is still there (a virtual port always is)."""
        port = self._port
        if port is None:
            return False
        if self.spec == "virtual":
            return True
        try:
            return port.name in port.rt.get_ports()
        except Exception:  # the MIDI system itself went away
            return False

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            if self._port is not None and not self._present():
                log.warning("MIDI clock: %s is gone; playing on at the last tempo until it returns", self._port.name)
                self._close()
            if self._port is None:
                if self._open():
                    self.reconnects += 1
                continue
            with self._lock:
                still = self._stopped_by_daw and self._last_reading is not None
                reading = self._last_reading
            if still and reading is not None:
                self._hand_on(ClockReading(reading.bpm, reading.beat, time.monotonic(), False, self.meter))

    # --- messages, on rtmidi's thread ---------------------------------------------------
    def _received(self, data: list[int], at: float, held: bool) -> None:
        status = data[0]
        if status == CLOCK:
            self._tick(at, timed=not held)
        elif status == START:
            with self._lock:
                self._relocated = self._relocated or self._next_tick != 0
                self._next_tick, self._playing, self._stopped_by_daw = 0, True, False
        elif status == CONTINUE:
            with self._lock:
                self._playing, self._stopped_by_daw = True, False
        elif status == STOP:
            with self._lock:
                self._playing, self._stopped_by_daw = False, True
                reading = self._reading(time.monotonic())
            if reading is not None:
                self._hand_on(reading)
        elif status == SONG_POSITION and len(data) == 3:
            with self._lock:
                self._next_tick = (data[1] | data[2] << 7) * TICKS_PER_SIXTEENTH
                self._relocated = True

    def _tick(self, at: float, *, timed: bool) -> None:
        lost = self.tempo.lost
        self.tempo.add(at, timed=timed)
        with self._lock:
            if self._playing:
                self._next_tick += self.tempo.lost - lost
            self._last_tick_at = at
            tick_time = self.tempo.tick_time if timed else at
            reading = self._reading(tick_time if tick_time is not None else at)
            if self._playing:
                self._next_tick += 1
        if reading is not None:
            self._hand_on(reading)

    def _reading(self, at: float) -> ClockReading | None:
        """Where the song is at ``at``: at the next tick's position while playing (this is
        that tick), held where it stopped otherwise. Under ``_lock``."""
        bpm = self.tempo.bpm
        if bpm is None:
            return None
        per_quarter = self.meter.beat_unit / 4  # beats of the meter's unit in one quarter note
        beat = self._next_tick / TICKS_PER_QUARTER * per_quarter
        reading = ClockReading(bpm * per_quarter, beat, at, self._playing, self.meter, relocated=self._relocated)
        self._relocated = False
        self._last_reading = reading
        return reading

    def _hand_on(self, reading: ClockReading) -> None:
        sink = self._sink
        if sink is not None:
            self.readings += 1
            sink(reading)

    # --- what a performer may ask ---------------------------------------------------------
    def health(self) -> dict[str, float | int | str | None]:
        with self._lock:
            last, port = self._last_tick_at, self._port
        return {"port": port.name if port is not None else None,
                "tick_age_s": None if last is None else round(time.monotonic() - last, 3),
                "estimated_bpm": None if self.tempo.bpm is None else round(self.tempo.bpm, 3),
                "tempo_jumps": self.tempo.jumps, "ticks_lost": self.tempo.lost, "reconnects": self.reconnects,
                "sysex_dropped": port.dropped if port is not None else 0}

    def request_tempo(self, bpm: float) -> None:
        raise ClockError("the MIDI clock sets the tempo: change it in the DAW or device that sends the clock")

    def request_playing(self, playing: bool) -> None:
        raise ClockError("the MIDI clock sets the transport: start and stop the DAW or device that sends the clock")

    def request_beat(self, beat: float) -> None:
        raise ClockError("the MIDI clock sets the position: move it in the DAW or device that sends the clock")
