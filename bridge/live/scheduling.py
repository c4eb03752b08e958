"""Changes on the grid: where a quantised change lands, and the frames <-> ring samples map.

Engine-thread only (the engine owns it, as it owns the stream). The engine tells it
where each frame's audio went in the ring (``placed``), so the first frame whose audio
starts at or after a bar line *at the output* is one division: the grid is the
clock's, in the same ring counters, with the output's latency already counted.

A quantised event is held here with the frame it lands on; the engine applies it at
the step that first touches that frame (the step whose last codebook's token is the
frame's: nothing before the bar line changes). If the grid re-phases (a locate, the
transport starting) before it lands, it is placed again from where the music is then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..clock.grid import Quantize, first_frame_from

if TYPE_CHECKING:
    from ..clock.clock import ClockSnapshot, MusicalClock
    from .control import ControlEvent

#: The tempo written for ``{bpm}`` in a prompt: whole beats a minute, so a source's
#: tempo estimate wobbling by a fraction re-conditions nothing.
BPM_FIELD = "{bpm}"


def fill_bpm(prompt: str, bpm: float) -> str:
    return prompt.replace(BPM_FIELD, str(round(bpm)))


class BpmPrompts:
    """The prompts as given, ``{bpm}`` unfilled, by the row each conditions (None: every
    row, the one-stream server's prompt; a stem's row: its own), and the rows whose
    re-conditioning to a new tempo waits for its bar line. Engine thread only."""

    def __init__(self, templates: dict[int | None, str]) -> None:
        self.templates = dict(templates)
        self.held: set[int | None] = set()

    def given(self, row: int | None, prompt: str) -> None:
        """A prompt change landed on ``row`` (None: on every row, each row's template with it)."""
        for key in (list(self.templates) if row is None else [row]):
            self.templates[key] = prompt
            self.held.discard(key)

    def due(self, bpm: float, playing: Sequence[str]) -> list[tuple[int | None, str]]:
        """(row, template) for each ``{bpm}`` prompt whose filling at ``bpm`` is not what the
        row plays now (``playing``: the stream's prompts, row by row; None reads row 0's, as
        every row plays the same), none already waiting; they wait from now on."""
        out = []
        for row, template in self.templates.items():
            now = playing[0 if row is None else row]
            if BPM_FIELD in template and row not in self.held and fill_bpm(template, bpm) != now:
                self.held.add(row)
                out.append((row, template))
        return out


@dataclass
class Held:
    event: ControlEvent
    quantize: Quantize
    frame: int  # the first frame it changes
    epoch: tuple[int, int]  # (the clock's epoch, the engine's placements) it was placed under


class OnTheGrid:
    """Quantised changes waiting for their frame, and where frames sound (see the module docstring)."""

    def __init__(self, clock: MusicalClock | None, per_frame: Fraction, max_delay: int, default: Quantize) -> None:
        self.clock = clock
        self.per_frame = per_frame  # ring samples per model frame, exactly
        self.max_delay = max_delay
        self.default = default
        self.anchor: tuple[int, int] | None = None  # (frame, the ring counter its audio starts at)
        self.held: list[Held] = []
        self._restarts = 0  # the audio restarted at a new place (transport play): held changes move

    # --- where frames sound --------------------------------------------------------
    def placed(self, frame: int, counter: int) -> None:
        """Frame ``frame``'s audio starts at ring counter ``counter``."""
        self.anchor = (frame, counter)

    def restart(self, frame: int, counter: int) -> None:
        """The audio goes on from frame ``frame`` at ``counter`` after a gap (a stop)."""
        self.anchor = (frame, counter)
        self._restarts += 1

    def frame_start(self, frame: int) -> Fraction | None:
        if self.anchor is None:
            return None
        return self.anchor[1] + (frame - self.anchor[0]) * self.per_frame

    def where(self, frame: int) -> dict[str, Any] | None:
        """Where frame ``frame`` sounds: its ring sample, bar and beat (the performance log's)."""
        start = self.frame_start(frame)
        if self.clock is None or start is None:
            return None
        snap = self.clock.snapshot
        bar_beat = snap.bar_beat(start)
        if bar_beat is None:
            return None
        return {"frame": frame, "sample": round(start), "bar": bar_beat[0], "beat": round(bar_beat[1], 4)}

    # --- quantised changes -----------------------------------------------------------
    def quantize_of(self, event: ControlEvent) -> Quantize:
        spec = event.quantize
        if spec is None:
            return Quantize("off")
        return self.default if spec == "default" else Quantize.parse(spec)

    def landing(self, event: ControlEvent, quantize: Quantize, earliest: int) -> int | None:
        """The first frame at or after ``earliest`` whose audio starts at or after the next
        ``quantize`` boundary from where the listener was when ``event`` arrived; None: at
        once (no quantize, no clock rolling, nothing placed yet)."""
        snap = self._snapshot()
        if quantize.unit == "off" or snap is None or not snap.playing or snap.grid is None or self.anchor is None:
            return None
        assert self.clock is not None  # a snapshot comes from it
        start = self.frame_start(earliest)
        assert start is not None  # anchored
        heard = self.clock.counter_at(event.arrived)
        boundary = snap.next_boundary(max(start, Fraction(heard)) if heard is not None else start, quantize)
        return max(earliest, first_frame_from(boundary, *self.anchor, self.per_frame))

    def hold(self, event: ControlEvent, quantize: Quantize, frame: int) -> None:
        self.held.append(Held(event, quantize, frame, self._epoch()))

    def due(self, next_step: int, earliest: int) -> list[tuple[ControlEvent, int]]:
        """Held events whose step has come, each with the step it lands at, in arrival order;
        those placed under a grid that has re-phased since are placed again first."""
        epoch = self._epoch()
        for held in self.held:
            if held.epoch != epoch:
                frame = self.landing(held.event, held.quantize, earliest)
                held.frame, held.epoch = (earliest if frame is None else frame), epoch
        ready = [h for h in self.held if h.frame + self.max_delay <= next_step]
        if not ready:
            return []
        self.held = [h for h in self.held if h.frame + self.max_delay > next_step]
        return sorted(((h.event, h.frame + self.max_delay) for h in ready), key=lambda item: item[1])

    def _snapshot(self) -> ClockSnapshot | None:
        return None if self.clock is None else self.clock.snapshot

    def _epoch(self) -> tuple[int, int]:
        snap = self._snapshot()
        return (0 if snap is None else snap.epoch, self._restarts)
