"""Sensors for target knobs: what the generated audio (or the model) says a concept is at.

Torch-free (numpy); the engine feeds them the audio it generated but has not yet played.

* ``pulse_reading``: tempo and beat phase from the onset envelope, near a reference tempo,
  as predominant-local-pulse trackers do: onsets are the peaks of a spectral-flux envelope,
  the pulse their inter-onset interval (gaps counted in whole pulses), the phase their
  circular mean offset from the host's pulse grid.
* ``centroid_reading``: the spectral centroid in Hz (timbre).
* ``probe_probability``: a logistic on the projection of an activation onto the concept's
  direction, centred and scaled by the projection's spread measured on the stream itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Onset envelope frames: 256 samples at 32 kHz, 8 ms.
HOP_S = 0.008
#: The tempi a pulse is looked for between (BPM).
MIN_BPM, MAX_BPM = 40.0, 240.0


@dataclass(frozen=True)
class PulseReading:
    bpm: float  # NaN when fewer than two onsets were found
    phase_s: float  # NaN without a grid or onsets
    onsets: int
    pulses_per_beat: int  # onsets a beat the reading assumed


def onset_envelope(audio: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Half-wave rectified spectral flux of log magnitudes, and its frame period in seconds."""
    hop = max(1, round(HOP_S * rate))
    n_fft = 4 * hop
    if audio.shape[-1] < n_fft + hop:
        return np.zeros(0), hop / rate
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
    spectrum = np.log1p(100.0 * np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)))
    flux = np.maximum(np.diff(spectrum, axis=0), 0.0).sum(axis=-1)
    return np.concatenate([[0.0], flux]), hop / rate


def onset_times(audio: np.ndarray, rate: int, min_gap_s: float) -> np.ndarray:
    """Onset times (seconds from the audio's first sample): envelope peaks above an adaptive
    threshold, at least ``min_gap_s`` apart (the strongest kept)."""
    env, period = onset_envelope(audio, rate)
    if len(env) < 3:
        return np.zeros(0)
    threshold = np.median(env) + 0.5 * (np.percentile(env, 95) - np.median(env))
    peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > threshold)) + 1
    gap = max(1, round(min_gap_s / period))
    kept: list[int] = []
    for p in peaks[np.argsort(-env[peaks])]:
        if all(abs(p - k) >= gap for k in kept):
            kept.append(int(p))
    # The flux frame at index i compares the windows starting at (i - 1) and i hops: the
    # hit lands near the middle of the second one.
    return np.sort(np.array(kept, dtype=np.float64)) * period + 2 * period


def pulse_period(onsets: np.ndarray, shortest: float, longest: float, tolerance: float = 0.02) -> float:
    """The pulse the onsets keep: the shortest period (in ``shortest..longest`` s) that nearly
    as many onsets are followed by, one period later, as by the best period. Onsets off the
    pulse (a note between two hits) are followed by little and do not count; a period of
    two pulses is followed as often as one, and the shortest such wins. Refined to the mean
    of the intervals that matched it. NaN when nothing repeats."""
    if len(onsets) < 3:
        return math.nan
    gaps = onsets[None, :] - onsets[:, None]
    periods = np.arange(shortest, longest, 0.005)
    scores = np.array([(np.abs(gaps - p) <= tolerance).any(axis=1).mean() for p in periods])
    if scores.max() < 0.5:
        return math.nan
    best = periods[np.flatnonzero(scores >= 0.8 * scores.max())[0]]
    matched = gaps[np.abs(gaps - best) <= tolerance]
    return float(matched.mean())


def pulse_reading(audio: np.ndarray, rate: int, reference_bpm: float, pulses_per_beat: int = 2,
                  grid_beat_of: Callable[[float], float] | None = None) -> PulseReading:
    """Tempo (BPM) and beat phase of ``audio``, read as ``pulses_per_beat`` onsets a beat (2:
    eighths, what a bar of most music, and every bar of the toy's, holds).

    The pulse is ``pulse_period``'s, so a stray onset between two pulses neither halves
    the reading nor a missed one doubles it; ``reference_bpm`` only bounds how close two
    onsets may be (a sixth of its beat).
    ``grid_beat_of(t)`` gives the host grid's position in beats ``t`` seconds after the
    audio's first sample (None: no grid, no phase); the phase is the onsets' circular
    mean offset from the grid's pulses, in seconds (> 0: the audio comes after the grid)."""
    if not (math.isfinite(reference_bpm) and reference_bpm > 0):
        raise ValueError(f"reference tempo must be positive, got {reference_bpm}")
    onsets = onset_times(audio, rate, min_gap_s=60.0 / reference_bpm / (3 * pulses_per_beat))
    if len(onsets) < 3:
        return PulseReading(math.nan, math.nan, len(onsets), pulses_per_beat)
    pulse = pulse_period(onsets, 60.0 / MAX_BPM / pulses_per_beat, 60.0 / MIN_BPM / pulses_per_beat)
    if not math.isfinite(pulse):
        return PulseReading(math.nan, math.nan, len(onsets), pulses_per_beat)
    bpm = 60.0 / pulse / pulses_per_beat
    phase = math.nan
    if grid_beat_of is not None:
        offsets = np.array([(grid_beat_of(float(t)) * pulses_per_beat) % 1.0 for t in onsets])
        angle = float(np.angle(np.mean(np.exp(2j * np.pi * offsets))))
        phase = angle / (2 * np.pi) * pulse  # > 0: past the grid line, the audio is late
    return PulseReading(bpm, phase, len(onsets), pulses_per_beat)


def centroid_reading(audio: np.ndarray, rate: int) -> float:
    """Spectral centroid (Hz) of ``audio``, magnitude-weighted over the whole window."""
    if audio.shape[-1] < 64:
        return math.nan
    magnitude = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[-1])))
    total = float(magnitude.sum())
    if total <= 0:
        return math.nan
    freqs = np.fft.rfftfreq(audio.shape[-1], 1.0 / rate)
    return float((freqs * magnitude).sum() / total)


def probe_probability(projection: float, centre: float, spread: float) -> float:
    """A logistic on a projection onto the concept direction: 0.5 at ``centre``, 0.88 one
    ``spread`` above it. The probe says the concept is there when it reads high."""
    if not (math.isfinite(projection) and spread > 0):
        return math.nan
    z = (projection - centre) / spread
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, 2.0 * z))))


__all__ = ["PulseReading", "centroid_reading", "onset_envelope", "onset_times", "probe_probability",
           "pulse_reading"]
