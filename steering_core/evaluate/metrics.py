"""What a listener would measure: brightness, loudness, onsets and tempo.

* ``spectral_centroid`` (brightness) and ``rms`` (loudness) live in ``audio.py``;
* ``onset_envelope``: half-wave rectified spectral flux, the usual onset detector;
* ``onset_rate``: peaks of that envelope per second (how busy the rhythm is);
* ``estimate_tempo``: the autocorrelation peak of the envelope within 60..200 BPM.
"""

from __future__ import annotations

import numpy as np

from steering_core.audio import rms, spectral_centroid

HOP = 512
N_FFT = 1024


def onset_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """(flux per hop, hops per second)."""
    mono = np.atleast_2d(audio).mean(axis=0).astype(np.float64)
    if mono.size < N_FFT + HOP:
        return np.zeros(0), sample_rate / HOP
    frames = np.lib.stride_tricks.sliding_window_view(mono, N_FFT)[::HOP]
    mag = np.log1p(100.0 * np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=-1)))
    flux = np.maximum(np.diff(mag, axis=0), 0.0).sum(axis=-1)
    return flux, sample_rate / HOP


def onset_rate(audio: np.ndarray, sample_rate: int) -> float:
    """Onsets per second: local maxima of the flux above an adaptive threshold."""
    flux, rate = onset_envelope(audio, sample_rate)
    if flux.size < 3 or flux.max() <= 0:
        return 0.0
    width = max(1, int(0.1 * rate))  # 100 ms neighbourhood
    padded = np.pad(flux, width, mode="edge")
    local_max = np.array([padded[i:i + 2 * width + 1].max() for i in range(flux.size)])
    threshold = np.median(flux) + 0.5 * flux.std()
    peaks = (flux == local_max) & (flux > threshold)
    return float(peaks.sum() / (len(np.atleast_2d(audio)[0]) / sample_rate))


def estimate_tempo(audio: np.ndarray, sample_rate: int, lo_bpm: float = 60.0, hi_bpm: float = 200.0) -> float:
    """BPM from the strongest periodicity of the onset envelope (0 if none)."""
    flux, rate = onset_envelope(audio, sample_rate)
    if flux.size < 4:
        return 0.0
    x = flux - flux.mean()
    ac = np.correlate(x, x, mode="full")[x.size - 1:]
    if ac[0] <= 0:
        return 0.0
    lags = np.arange(ac.size)
    valid = (lags >= rate * 60.0 / hi_bpm) & (lags <= rate * 60.0 / lo_bpm)
    if not valid.any():
        return 0.0
    best = int(lags[valid][np.argmax(ac[valid])])
    # Refine the lag with a parabola through the peak and its neighbours.
    if 0 < best < ac.size - 1:
        a, b, c = ac[best - 1], ac[best], ac[best + 1]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        shift = 0.0
    return float(60.0 * rate / (best + shift))


def describe(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Every metric for one clip."""
    return {
        "centroid_hz": spectral_centroid(audio, sample_rate),
        "rms": rms(audio),
        "onset_rate": onset_rate(audio, sample_rate),
        "tempo_bpm": estimate_tempo(audio, sample_rate),
    }
