"""The target knobs' sensors (bridge/live/sensors.py) on synthetic audio with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.live.sensors import centroid_reading, probe_probability, pulse_reading

RATE = 32000


def clicks(bpm: float, seconds: float, offset_s: float = 0.0, per_beat: int = 2, strays: bool = False) -> np.ndarray:
    """Noise bursts every 1/per_beat beat from ``offset_s``, over a quiet tone; ``strays``
    adds a softer tone onset a third of the way between some of them."""
    rng = np.random.default_rng(0)
    audio = 0.02 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * RATE)) / RATE)
    period = 60.0 / bpm / per_beat
    burst = rng.standard_normal(400) * np.exp(-np.arange(400) / 80)
    t, n = offset_s, 0
    while t * RATE + 400 < len(audio):
        i = int(t * RATE)
        audio[i:i + 400] += 0.5 * burst
        if strays and n % 3 == 0:
            j = int((t + period / 3) * RATE)
            audio[j:j + 800] += 0.2 * np.sin(2 * np.pi * 1500 * np.arange(800) / RATE)
        t, n = t + period, n + 1
    return audio.astype(np.float32)


@pytest.mark.parametrize("bpm", [70.0, 120.0, 165.0])
def test_the_pulse_reads_the_tempo_whatever_the_reference(bpm):
    for reference in (60.0, 120.0, 180.0):
        reading = pulse_reading(clicks(bpm, 3.0), RATE, reference)
        assert reading.bpm == pytest.approx(bpm, rel=0.02), (bpm, reference, reading)


def test_stray_onsets_between_pulses_neither_halve_nor_double_the_reading():
    assert pulse_reading(clicks(100.0, 3.0, strays=True), RATE, 120.0).bpm == pytest.approx(100.0, rel=0.02)


def test_the_phase_says_how_late_the_audio_is_against_the_grid():
    bpm = 120.0
    grid = lambda t: t * bpm / 60.0  # noqa: E731 - the grid starts with the audio
    for late in (-0.03, 0.0, 0.04):
        reading = pulse_reading(clicks(bpm, 3.0, offset_s=0.25 + late), RATE, bpm, grid_beat_of=grid)
        assert reading.phase_s == pytest.approx(late, abs=0.012), (late, reading)


def test_no_pulse_reads_nan_and_centroid_and_probe_behave():
    assert math.isnan(pulse_reading(np.zeros(RATE * 2, np.float32), RATE, 120.0).bpm)
    tone = lambda f: np.sin(2 * np.pi * f * np.arange(RATE) / RATE).astype(np.float32)  # noqa: E731
    assert centroid_reading(tone(500), RATE) < centroid_reading(tone(3000), RATE)
    assert centroid_reading(tone(1000), RATE) == pytest.approx(1000, rel=0.05)
    assert probe_probability(0.0, 0.0, 1.0) == 0.5 and probe_probability(3.0, 0.0, 1.0) > 0.99


def drums_with_tonal_notes(bpm: float, seconds: float) -> tuple[np.ndarray, float]:
    """Drum-like noise hits every eighth, each gap give or take 20 ms (the toy's drummer:
    a frame either way), over a lead that changes note (a fresh harmonic tone) at an
    irregular point between most pairs of hits, as the toy's lead and piano do. The audio
    and the hits' own tempo (30 / their mean gap)."""
    rng = np.random.default_rng(1)
    n = int(seconds * RATE)
    audio = np.zeros(n)
    period = 30.0 / bpm
    burst = rng.standard_normal(600) * np.exp(-np.arange(600) / 100)
    hits = [0.05]
    while hits[-1] + period + 0.1 < seconds:
        hits.append(hits[-1] + period + rng.choice([-0.02, 0.0, 0.0, 0.02]))
    for t in hits:
        i = int(t * RATE)
        audio[i:i + 600] += 0.6 * burst[:n - i]
    changes = [t + period * rng.uniform(0.2, 0.6) for t in hits if rng.random() < 0.8]
    bounds = [0.0, *changes, seconds]
    for a, b, f in zip(bounds, bounds[1:], rng.choice([400, 500, 600, 750, 1000], len(bounds)), strict=False):
        t = np.arange(int(a * RATE), int(b * RATE)) / RATE
        audio[int(a * RATE):int(b * RATE)] += 0.12 * sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 6))
    return audio.astype(np.float32), 30.0 * (len(hits) - 1) / (hits[-1] - hits[0])


@pytest.mark.parametrize("bpm", [70.0, 100.0, 140.0])
def test_tonal_note_changes_between_the_hits_do_not_move_the_reading(bpm):
    audio, played = drums_with_tonal_notes(bpm, 3.0)
    for reference in (bpm * 0.8, bpm, bpm * 1.25):
        reading = pulse_reading(audio, RATE, reference)
        assert reading.bpm == pytest.approx(played, rel=0.03), (played, reference, reading)
