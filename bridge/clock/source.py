"""What a clock source is: something that tells where the music is, how fast it goes and
whether it rolls, as ``ClockReading``s, from a thread of its own.

A source never touches the engine. It hands each reading to a sink (a plain callable,
called from the source's own thread: JACK's, the MIDI input's, a poller's), and the
musical clock, the one owner of the grid, places it on the output's samples. Sources
differ in what they know: JACK transport and Link tell tempo, position and play state;
MIDI clock tells ticks, from which its source estimates tempo; OSC and the internal
clock are told by messages. What they hand on is the same.

``SOURCES`` maps each ``--sync`` name to a factory; a new source is one more entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Protocol

from steering_core.errors import UserError


class ClockError(UserError):
    """A clock source that cannot be used: not installed, no server, a refused request."""


@dataclass(frozen=True)
class Meter:
    """Beats to a bar, and which note value a beat is (7/8: seven eighth-note beats)."""

    beats_per_bar: int = 4
    beat_unit: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.beats_per_bar <= 64 or self.beat_unit not in (1, 2, 4, 8, 16, 32):
            raise ClockError(f"no such meter {self.beats_per_bar}/{self.beat_unit}")

    def __str__(self) -> str:
        return f"{self.beats_per_bar}/{self.beat_unit}"

    @classmethod
    def parse(cls, text: str) -> Meter:
        """``"7/8"`` -> Meter(7, 8); one clear line for anything else."""
        top, sep, bottom = text.partition("/")
        if not sep or not top.strip().isdigit() or not bottom.strip().isdigit():
            raise ClockError(f"a meter is beats/unit, such as 4/4 or 7/8, not {text!r}")
        return cls(int(top), int(bottom))


@dataclass(frozen=True)
class ClockReading:
    """One moment of a source's time: at monotonic time ``at`` (``time.monotonic()``
    seconds, when the position is true for a listener of that source), the music was
    ``beat`` beats from the song's start (bar 1, beat 1 is 0.0; beats of ``meter``'s
    unit), going at ``bpm`` of those beats a minute. ``relocated`` marks a jump the
    source saw itself (a locate, a song position pointer, a new Link timeline)."""

    bpm: float
    beat: float
    at: float
    playing: bool
    meter: Meter = field(default_factory=Meter)
    relocated: bool = False


#: Where a source hands its readings; called from the source's own thread, it must not block.
ReadingSink = Callable[[ClockReading], None]


class ClockSource(Protocol):
    """One source of musical time, started once and stopped once.

    ``timeout_s``: seconds without a reading after which the clock counts the source as
    gone (None: never, as for the internal clock); it logs that once, plays on at the
    last tempo, and takes the source's readings again when they come back. A source
    that loses its server or port keeps trying to get it back on its own thread.

    The ``request_*`` methods are a performer's (``/transport/bpm`` and the rest): a
    source that leads (internal, OSC, ``jack-master``, Link) does it; one that follows
    another clock raises ``ClockError`` with one line saying who sets the tempo."""

    name: str
    timeout_s: float | None

    def start(self, sink: ReadingSink) -> None: ...
    def stop(self) -> None: ...
    def health(self) -> dict[str, float | int | str | None]: ...
    def request_tempo(self, bpm: float) -> None: ...
    def request_playing(self, playing: bool) -> None: ...
    def request_beat(self, beat: float) -> None: ...


@dataclass(frozen=True)
class SyncOptions:
    """What the sources are built from (``serve --sync``, ``--bpm``, ``--meter``, ...)."""

    bpm: float = 120.0
    meter: Meter = field(default_factory=Meter)
    midi_in: str | None = None  # the MIDI input port MIDI clock arrives on
    midi_api: str = "auto"  # the MIDI back end that port is on (serve --midi-api)
    jack_client: str = "steerbridge"  # the JACK client name the transport is read through
    link_quantum: float | None = None  # beats of Link's phase; None: one bar of ``meter``


#: Builds a source from the options; called on the main thread before the set starts.
SourceFactory = Callable[[SyncOptions], ClockSource]

def lazy(module: str, factory: str) -> SourceFactory:
    """A factory that imports its module only when the source is asked for, so JACK or
    Link libraries load only in a set that uses them."""

    def build(options: SyncOptions) -> ClockSource:
        made: ClockSource = getattr(import_module(module), factory)(options)
        return made

    return build


#: Every source ``serve --sync`` can name: one row per source, its module imported lazily.
SOURCES: dict[str, SourceFactory] = {
    "internal": lazy("bridge.clock.told", "InternalClock"),
    "osc": lazy("bridge.clock.told", "OscTransport"),
    "jack": lazy("bridge.clock.jack_transport", "JackTransport"),
    "jack-master": lazy("bridge.clock.jack_transport", "JackMaster"),
    "midi": lazy("bridge.clock.midi_clock", "MidiClockSource"),
    "link": lazy("bridge.clock.link", "LinkSource"),
}


def open_source(name: str, options: SyncOptions) -> ClockSource:
    try:
        factory = SOURCES[name]
    except KeyError:
        raise ClockError(f"unknown clock source {name!r}; there are: {', '.join(sorted(SOURCES))}") from None
    return factory(options)
