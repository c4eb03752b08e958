"""Sensors for target knobs: what the generated audio (or the model) says a concept is at.

Torch-free (numpy); the engine feeds them the audio it generated but has not yet played.

* ``pulse_reading``: tempo and beat phase from the onset envelope: onsets are the strong
  peaks of a spectral-flux envelope (the drum hits; a tonal note change between two hits
  is weaker), the pulse the period of the grid they fit best (a comb fit with octave
  correction and a weak prior near the reference tempo), the tempo their span over the
  whole pulses on that grid, the phase their circular mean offset from the host's grid.
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


def onset_times(audio: np.ndarray, rate: int, min_gap_s: float, relative: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Onset times (seconds from the audio's first sample) and strengths: envelope peaks above
    ``relative`` of the window's strongest, at least ``min_gap_s`` apart (the strongest kept).
    A threshold relative to the strongest hit, not to the envelope's spread, is what keeps the
    weak flux a tonal note change or a sound's end leaves between two drum hits out."""
    env, period = onset_envelope(audio, rate)
    if len(env) < 3 or env.max() <= 0:
        return np.zeros(0), np.zeros(0)
    threshold = relative * env.max()
    peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > threshold)) + 1
    gap = max(1, round(min_gap_s / period))
    kept: list[int] = []
    for p in peaks[np.argsort(-env[peaks])]:
        if all(abs(p - k) >= gap for k in kept):
            kept.append(int(p))
    frames = np.sort(np.array(kept, dtype=np.int64))
    # The flux frame at index i compares the windows starting at (i - 1) and i hops: the
    # hit lands near the middle of the second one.
    return frames * period + 2 * period, env[frames]


#: A grid fits an onset within this fraction of its period.
GRID_TOLERANCE = 0.12
#: The longest period whose fit is at least this share of the best one wins (octave correction).
OCTAVE_SHARE = 0.8
#: The fit lost per octave between a period and the reference tempo's (a weak prior).
PRIOR_PER_OCTAVE = 0.02


def pulse_grid(onsets: np.ndarray, strengths: np.ndarray, shortest: float, longest: float,
               reference_s: float) -> tuple[float, np.ndarray]:
    """The pulse period (s) whose grid the onsets fit, and which onsets lie on it.

    A comb fit: for each period, the strength-weighted share of onsets within
    ``GRID_TOLERANCE`` of a grid through the best-fitting onset. The strong hits of a drum
    kit fit their pulse; a tonal onset between two hits is weak and off it, and a period of
    half the pulse fits those too but never better than the pulse does by much, so the
    *longest* period within ``OCTAVE_SHARE`` of the best fit wins (the octave correction),
    after a weak prior toward ``reference_s`` (the setpoint's or the clock's pulse) has
    broken near ties. (NaN, empty) when fewer than three onsets or no period fits two gaps."""
    if len(onsets) < 3:
        return math.nan, np.zeros(0, bool)
    span = float(onsets[-1] - onsets[0])
    periods = np.arange(shortest, min(longest, span / 2) + 1e-9, 0.0025)
    if periods.size == 0:
        return math.nan, np.zeros(len(onsets), bool)
    weights = strengths / strengths.sum()
    lags = onsets[:, None] - onsets[None, :]  # [onset, anchor]
    cycles = lags[None] / periods[:, None, None]
    on = np.abs(cycles - np.round(cycles)) <= GRID_TOLERANCE  # [period, onset, anchor]
    fits = (on * weights[None, :, None]).sum(axis=1)  # [period, anchor]
    anchors = fits.argmax(axis=1)
    score = fits.max(axis=1) - PRIOR_PER_OCTAVE * np.abs(np.log2(periods / reference_s))
    chosen = int(np.flatnonzero(score >= OCTAVE_SHARE * score.max())[-1])
    keep = on[chosen, :, anchors[chosen]]
    return float(periods[chosen]), keep


def pulse_reading(audio: np.ndarray, rate: int, reference_bpm: float, pulses_per_beat: int = 2,
                  grid_beat_of: Callable[[float], float] | None = None) -> PulseReading:
    """Tempo (BPM) and beat phase of ``audio``, read as ``pulses_per_beat`` onsets a beat (2:
    eighths, what a bar of most music, and every bar of the toy's, holds).

    The pulse is ``pulse_grid``'s; the tempo is then read off the onsets on its grid alone,
    as their span over the whole pulses it holds, so a missed hit neither halves the
    reading nor a stray onset between two hits doubles it. ``reference_bpm`` (the setpoint,
    or the clock's tempo) only breaks near ties between octaves.
    ``grid_beat_of(t)`` gives the host grid's position in beats ``t`` seconds after the
    audio's first sample (None: no grid, no phase); the phase is the on-grid onsets'
    circular mean offset from the grid's pulses, in seconds (> 0: the audio comes after the grid)."""
    if not (math.isfinite(reference_bpm) and reference_bpm > 0):
        raise ValueError(f"reference tempo must be positive, got {reference_bpm}")
    onsets, strengths = onset_times(audio, rate, min_gap_s=0.5 * 60.0 / MAX_BPM / pulses_per_beat)
    if len(onsets) < 3:
        return PulseReading(math.nan, math.nan, len(onsets), pulses_per_beat)
    period, keep = pulse_grid(onsets, strengths, 60.0 / MAX_BPM / pulses_per_beat, 60.0 / MIN_BPM / pulses_per_beat,
                              60.0 / reference_bpm / pulses_per_beat)
    on_grid = onsets[keep]
    if not math.isfinite(period) or len(on_grid) < 3:
        return PulseReading(math.nan, math.nan, len(onsets), pulses_per_beat)
    pulses = round((on_grid[-1] - on_grid[0]) / period)
    pulse = float(on_grid[-1] - on_grid[0]) / pulses
    bpm = 60.0 / pulse / pulses_per_beat
    phase = math.nan
    if grid_beat_of is not None:
        offsets = np.array([(grid_beat_of(float(t)) * pulses_per_beat) % 1.0 for t in on_grid])
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


__all__ = ["PulseReading", "centroid_reading", "onset_envelope", "onset_times", "probe_probability", "pulse_grid",
           "pulse_reading"]
