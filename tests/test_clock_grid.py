"""The bar grid's exact arithmetic (bridge/clock/grid.py): no drift over a long set, at
any tempo and meter; tempo changes anchored on exact samples; quantize boundaries."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.clock.grid import Grid, Quantize, exact_bpm, first_frame_from, frame_samples
from bridge.clock.source import ClockError, Meter

RATE = 48_000
HOUR = 3600 * RATE

tempos = st.integers(min_value=300, max_value=3000).map(lambda t: t / 10)  # 30.0 .. 300.0, as typed
meters = st.builds(Meter, st.integers(1, 15), st.sampled_from([2, 4, 8, 16]))


def test_an_hour_at_127_3_bpm_in_7_8_drifts_by_no_sample() -> None:
    grid = Grid.start(RATE, 127.3, Meter(7, 8))
    assert grid.last.bpm == Fraction(1273, 10)
    bar = Quantize("bar")
    # Walk every bar line of the hour as the engine does, one boundary after the other.
    boundary, bars = Fraction(0), 0
    while boundary < HOUR:
        assert boundary == Fraction(bars * 7 * 60 * RATE) / Fraction(1273, 10)  # the closed form, exactly
        assert grid.position(boundary).beat == 1 and grid.position(boundary).bar == bars + 1
        boundary = grid.next_boundary(boundary + 1, bar)
        bars += 1
    assert grid.beat_at(HOUR) == Fraction(1273, 10) * 60  # 7638 beats in the hour, not one sample off
    assert bars == 1091 + 1  # bar lines at 0 .. 1091 bars (7637 beats) lie inside the hour
    # Frame by frame, as the engine places its audio: the sum of 180,000 frames is exact.
    per_frame = frame_samples(RATE, 50)
    position = Fraction(0)
    for _ in range(50 * 3600):
        position += per_frame
    assert position == HOUR and grid.beat_at(position) == 7638


@given(tempos, meters, st.integers(0, HOUR))
def test_sample_and_beat_are_exact_inverses(bpm: float, meter: Meter, sample: int) -> None:
    grid = Grid.start(RATE, bpm, meter)
    assert grid.sample_of(grid.beat_at(sample)) == sample
    position = grid.position(sample)
    assert 1 <= position.beat < meter.beats_per_bar + 1
    assert (position.bar - 1) * meter.beats_per_bar + position.beat - 1 == grid.beat_at(sample)


@given(tempos, tempos, meters, st.integers(1, HOUR), st.integers(0, HOUR))
def test_a_tempo_change_is_a_segment_anchored_on_its_sample(first: float, second: float, meter: Meter,
                                                            change_at: int, sample: int) -> None:
    grid = Grid.start(RATE, first, meter).with_tempo(change_at, second)
    before = Grid.start(RATE, first, meter)
    assert grid.last.sample == change_at and grid.last.bpm == exact_bpm(second)
    assert grid.beat_at(change_at) == before.beat_at(change_at)  # continuous, exactly
    if sample <= change_at:
        assert grid.beat_at(sample) == before.beat_at(sample)  # the past is untouched
    else:
        assert grid.beat_at(sample) == before.beat_at(change_at) + Fraction(sample - change_at) \
            * exact_bpm(second) / (60 * RATE)
    assert grid.sample_of(grid.beat_at(sample)) == sample


@given(tempos, meters, st.integers(0, HOUR), st.sampled_from(["off", "beat", "bar", "2bar", "4bar"]))
def test_the_next_boundary_is_the_first_at_or_after(bpm: float, meter: Meter, sample: int, spec: str) -> None:
    grid = Grid.start(RATE, bpm, meter)
    quantize = Quantize.parse(spec)
    boundary = grid.next_boundary(sample, quantize)
    assert boundary >= sample
    if spec == "off":
        assert boundary == sample
        return
    step = quantize.beats(meter)
    beat = grid.beat_at(boundary)
    assert beat.denominator == 1 and beat % step == 0  # on the grid
    assert grid.beat_at(sample) > beat - step  # and no grid line between
    assert grid.next_boundary(boundary, quantize) == boundary  # at-or-after: a boundary is its own


@settings(max_examples=50)
@given(tempos, st.integers(0, HOUR), st.integers(1, 4))
def test_the_first_frame_at_or_after_a_boundary(bpm: float, sample: int, ratio: int) -> None:
    per_frame = frame_samples(RATE, 50)
    origin, frame0 = 12_345, 7
    grid = Grid.start(RATE, bpm, sample=origin)
    boundary = grid.next_boundary(sample + origin, Quantize("bar"))
    frame = first_frame_from(boundary, frame0, origin, per_frame)
    start = origin + (frame - frame0) * per_frame
    assert boundary <= start < boundary + per_frame  # within one frame of the bar line


def test_quantize_and_tempo_refuse_nonsense_in_one_line() -> None:
    assert str(Quantize.parse("4bar")) == "4bar" and Quantize.parse("bar") == Quantize("bar", 1)
    for bad in ("", "bars", "0bar", "half", "1.5bar"):
        with pytest.raises(ClockError, match="quantize is off, beat, bar or <n>bar"):
            Quantize.parse(bad)
    for bad in (0.0, float("nan"), 1e6):
        with pytest.raises(ClockError):
            exact_bpm(bad)
