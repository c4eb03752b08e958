"""Audio files and simple measurements of audio (no sound cards here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pedalboard.io import AudioFile


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write [channels, samples] float audio as a 16-bit WAV with pedalboard's AudioFile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    with AudioFile(str(path), "w", samplerate=sample_rate, num_channels=audio.shape[0],
                   bit_depth=16) as f:
        f.write(np.clip(audio, -1.0, 1.0))
    return path


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """[channels, samples] float32 and the sample rate (wav, flac, mp3, ...)."""
    with AudioFile(str(path)) as f:
        return f.read(f.frames), int(f.samplerate)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def spectral_centroid(audio: np.ndarray, sample_rate: int, n_fft: int = 2048) -> float:
    """Mean spectral centroid in Hz: higher means brighter."""
    mono = np.atleast_2d(audio).mean(axis=0)
    if mono.size < n_fft:
        mono = np.pad(mono, (0, n_fft - mono.size))
    frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[:: n_fft // 2]
    mag = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    power = mag.sum(axis=-1)
    keep = power > 1e-9
    if not keep.any():
        return 0.0
    return float(((mag[keep] * freqs).sum(axis=-1) / power[keep]).mean())
