"""The bar grid in exact arithmetic: beats, bars and samples, without drift.

A grid is a list of segments, each anchored on an exact sample: from ``sample`` on, the
music is ``beat`` beats from the song's start and goes at ``bpm`` (a ``Fraction``). A
tempo change is a new segment anchored on the sample where it happens, with the beat the
previous segment reaches there, so the beat is continuous and no rounding is ever
carried forward: the beat at sample N is one multiplication from its segment's anchor,
whatever came before. Positions are ``Fraction``s of samples (at the grid's sample rate,
the output's); frames (the model's, 50 a second) are samples times ``frame_rate / rate``.

Bars count from the song's start in the segment's meter: bar 1 starts at beat 0. The
module is torch-free and holds no state beyond the frozen grid, so any thread may read
a grid while the clock's owner builds the next one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

from .source import ClockError, Meter

Number = int | float | Fraction

#: A float tempo as a Fraction: exact for every tempo a person types (127.3 -> 1273/10).
TEMPO_DENOMINATOR = 10_000


def exact_bpm(bpm: Number) -> Fraction:
    """A tempo as an exact Fraction; a float is read as the decimal it was typed as."""
    if isinstance(bpm, Fraction):
        value = bpm
    elif isinstance(bpm, int):
        value = Fraction(bpm)
    else:
        if not math.isfinite(bpm):
            raise ClockError(f"a tempo must be a finite number, got {bpm}")
        value = Fraction(bpm).limit_denominator(TEMPO_DENOMINATOR)
    if not 1 <= value <= 999:
        raise ClockError(f"tempo {float(value):g} BPM is outside 1..999")
    return value


@dataclass(frozen=True)
class Quantize:
    """Where a change may land: ``off`` (at once), every ``beat``, or every ``bars`` bars."""

    unit: str = "off"  # "off" | "beat" | "bar"
    bars: int = 1

    @classmethod
    def parse(cls, text: str) -> Quantize:
        """``off``, ``beat``, ``bar`` or ``<n>bar`` (``2bar``, ``4bar``); one line for anything else."""
        spoken = text.strip().lower()
        if spoken in ("off", "beat", "bar"):
            return cls(spoken)
        match = re.fullmatch(r"([1-9][0-9]{0,2})\s*bars?", spoken)
        if match is None:
            raise ClockError(f"quantize is off, beat, bar or <n>bar (such as 4bar), not {text!r}")
        return cls("bar", int(match.group(1)))

    def __str__(self) -> str:
        return self.unit if self.unit != "bar" or self.bars == 1 else f"{self.bars}bar"

    def beats(self, meter: Meter) -> int:
        """The grid's step in beats (0: off)."""
        return 0 if self.unit == "off" else 1 if self.unit == "beat" else self.bars * meter.beats_per_bar


@dataclass(frozen=True)
class Segment:
    """From ``sample`` on (until the next segment): ``beat`` beats there, at ``bpm``."""

    sample: int
    beat: Fraction
    bpm: Fraction
    meter: Meter = field(default_factory=Meter)

    def samples_per_beat(self, rate: int) -> Fraction:
        return Fraction(60 * rate) / self.bpm

    def beat_at(self, sample: Number, rate: int) -> Fraction:
        return self.beat + (Fraction(sample) - self.sample) / self.samples_per_beat(rate)

    def sample_of(self, beat: Number, rate: int) -> Fraction:
        return self.sample + (Fraction(beat) - self.beat) * self.samples_per_beat(rate)


@dataclass(frozen=True)
class Position:
    """Bar and beat for a listener: ``bar`` counts from 1, ``beat`` from 1.0 within the bar
    (2.5 is halfway through the second beat)."""

    bar: int
    beat: Fraction
    meter: Meter


@dataclass(frozen=True)
class Grid:
    """Segments in order of their anchor samples, at ``rate`` samples a second."""

    rate: int
    segments: tuple[Segment, ...]

    #: Segments kept behind the one that holds the present: enough to place a change a
    #: little in the past, while the grid of a long set stays small.
    KEEP = 16

    @classmethod
    def start(cls, rate: int, bpm: Number, meter: Meter | None = None, *, sample: int = 0,
              beat: Number = 0) -> Grid:
        return cls(rate, (Segment(sample, Fraction(beat), exact_bpm(bpm), meter or Meter()),))

    # --- building the next grid: each returns a new one ---------------------------
    def with_tempo(self, sample: int, bpm: Number, meter: Meter | None = None) -> Grid:
        """The tempo (and meter) changes at ``sample``; the beat goes on from where it is there."""
        here = self.segment_at(sample)
        new = Segment(sample, here.beat_at(sample, self.rate), exact_bpm(bpm), meter or here.meter)
        return self._then(new)

    def relocated(self, sample: int, beat: Number, bpm: Number | None = None, meter: Meter | None = None) -> Grid:
        """The music is at ``beat`` at ``sample`` (a jump, or a phase correction)."""
        here = self.segment_at(sample)
        new = Segment(sample, Fraction(beat), here.bpm if bpm is None else exact_bpm(bpm), meter or here.meter)
        return self._then(new)

    def _then(self, new: Segment) -> Grid:
        kept = tuple(s for s in self.segments if s.sample < new.sample)[-self.KEEP:]
        return Grid(self.rate, (*kept, new))

    # --- reading -----------------------------------------------------------------------
    @property
    def last(self) -> Segment:
        return self.segments[-1]

    def segment_at(self, sample: Number) -> Segment:
        """The segment in force at ``sample`` (before the first: the first, run backwards)."""
        found = self.segments[0]
        for segment in self.segments:
            if segment.sample <= sample:
                found = segment
            else:
                break
        return found

    def beat_at(self, sample: Number) -> Fraction:
        return self.segment_at(sample).beat_at(sample, self.rate)

    def sample_of(self, beat: Number) -> Fraction:
        """The sample where the music reaches ``beat`` (beats only grow along a grid)."""
        beat = Fraction(beat)
        found = self.segments[0]
        for segment in self.segments:
            if segment.beat <= beat:
                found = segment
            else:
                break
        return found.sample_of(beat, self.rate)

    def position(self, sample: Number) -> Position:
        segment = self.segment_at(sample)
        beat = segment.beat_at(sample, self.rate)
        per_bar = segment.meter.beats_per_bar
        bar = math.floor(beat / per_bar)
        return Position(bar + 1, beat - bar * per_bar + 1, segment.meter)

    def next_boundary(self, sample: Number, quantize: Quantize) -> Fraction:
        """The first sample at or after ``sample`` where ``quantize``'s grid lies (for ``off``,
        ``sample`` itself). Bars of ``<n>bar`` count from the song's start: 4bar lands on
        bars 1, 5, 9, ..."""
        sample = Fraction(sample)
        step = quantize.beats(self.segment_at(sample).meter)
        if step == 0:
            return sample
        beat = self.beat_at(sample)
        return self.sample_of(math.ceil(beat / step) * step)


def frame_samples(rate: int, frame_rate: Number) -> Fraction:
    """Samples (at ``rate``) in one model frame: exact (48 kHz at 50 frames/s: 960)."""
    return Fraction(rate) / Fraction(frame_rate)


def first_frame_from(sample: Number, frame: int, frame_sample: Number, per_frame: Fraction) -> int:
    """The first frame whose audio starts at or after ``sample``, given that frame ``frame``'s
    audio starts at ``frame_sample`` and each lasts ``per_frame`` samples."""
    return frame + math.ceil((Fraction(sample) - Fraction(frame_sample)) / per_frame)
