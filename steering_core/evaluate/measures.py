"""Everything a sweep measures on one steered clip, in one table.

``measure_sweep`` renders ``seeds`` clips (batch rows of one stream) at each alpha of a
vector and measures each clip on the audio: onset rate (how busy the rhythm is), spectral
centroid (brightness), RMS (loudness), spectral flatness (how noise-like) and, from the
codes, how many distinct frames it holds (a stuck loop has few). A model whose codes can be read back
(the toy: ``toy/readback.py``) adds what it played, measured exactly. Calibration
(``calibration.py``) and the selectivity matrix (``selectivity.py``) read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from steering_core.audio import rms, spectral_centroid
from steering_core.codec.streaming import decode
from steering_core.evaluate.metrics import onset_rate
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream

CodeReader = Callable[[np.ndarray], dict[str, float]]
AUDIO_MEASURES = ("onset_rate", "centroid_hz", "rms", "flatness")
#: A stream is stuck when the second half of a clip is made of this many distinct code
#: frames or fewer: a drone, or a loop shorter than any musical figure. A groove's drum
#: voices count their frames since the hit, so even a slow one has many more.
STUCK_MAX_DISTINCT = 8


def spectral_flatness(audio: np.ndarray, n_fft: int = 1024) -> float:
    """Geometric over arithmetic mean of the power spectrum, averaged over frames:
    near 0 for tones, near 1 for white noise."""
    mono = np.atleast_2d(audio).mean(axis=0).astype(np.float64)
    if mono.size < n_fft:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[::n_fft // 2]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2 + 1e-12
    flat = np.exp(np.log(power).mean(axis=-1)) / power.mean(axis=-1)
    loud = (frames ** 2).mean(axis=-1) > 1e-8  # silent frames say nothing about noise
    return float(flat[loud].mean()) if loud.any() else 0.0


def distinct_frames(codes: np.ndarray) -> int:
    """How many distinct code frames (columns of [K, T]) the second half of a clip holds."""
    codes = np.asarray(codes)
    tail = codes[:, codes.shape[1] // 2:]
    return len({tuple(col) for col in tail.T.tolist()})


def code_reader_for(handle: MusicGenHandle) -> CodeReader | None:
    """The ground-truth reader of a model whose codes say what it played (the toy), else None."""
    if handle.model_id == "toy":
        from steering_core.toy.readback import read_codes

        return read_codes
    return None


@dataclass(frozen=True)
class MeasureTable:
    """Measures against alpha: ``values[name]`` is [alphas, seeds]."""

    concept: str
    alphas: list[float]
    values: dict[str, np.ndarray]
    prompt: str
    seeds: int
    seconds: float

    def means(self, name: str) -> np.ndarray:
        return np.nanmean(self.values[name], axis=1)

    def at_zero(self, name: str) -> float:
        return float(self.means(name)[self.alphas.index(0.0)])

    def to_json(self, per_seed: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "concept": self.concept, "alphas": self.alphas, "prompt": self.prompt, "seeds": self.seeds,
            "seconds": self.seconds, "mean": {k: np.round(self.means(k), 4).tolist() for k in self.values},
            "std": {k: np.round(np.nanstd(v, axis=1), 4).tolist() for k, v in self.values.items()}}
        if per_seed:
            out["values"] = {k: v.tolist() for k, v in self.values.items()}
        return out

    @staticmethod
    def from_json(raw: dict[str, Any]) -> MeasureTable:
        """A table saved with ``to_json(per_seed=True)``."""
        values = {k: np.array(v, dtype=np.float64) for k, v in raw["values"].items()}
        return MeasureTable(str(raw["concept"]), [float(a) for a in raw["alphas"]], values, str(raw["prompt"]),
                            int(raw["seeds"]), float(raw["seconds"]))


def measure_clip(audio: np.ndarray, codes: np.ndarray, sample_rate: int, reader: CodeReader | None) -> dict[str, float]:
    out = {"onset_rate": onset_rate(audio, sample_rate), "centroid_hz": spectral_centroid(audio, sample_rate),
           "rms": rms(audio), "flatness": spectral_flatness(audio), "distinct_frames": float(distinct_frames(codes))}
    if reader is not None:
        out.update(reader(codes))
    return out


def measure_sweep(handle: MusicGenHandle, vector: SteeringVector, alphas: Sequence[float], *, prompt: str,
                  seeds: int = 3, seconds: float = 4.0, seed: int = 0,
                  on_alpha: Callable[[float], object] | None = None) -> MeasureTable:
    """Render ``seeds`` clips at every alpha (same seeds at each) and measure them all."""
    reader = code_reader_for(handle)
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    frames = max(1, round(seconds * handle.frame_rate))
    rows: list[list[dict[str, float]]] = []
    for alpha in alphas:
        steerer.set_alpha(vector.concept, float(alpha))
        stream = MusicStream(handle, [prompt] * seeds, seed=seed, steerer=steerer)
        with stream.steering():
            codes = stream.generate_frames(frames)
        clips = [decode(handle, codes[i:i + 1])[0] for i in range(seeds)]
        rows.append([measure_clip(a, codes[i].cpu().numpy(), handle.sample_rate, reader) for i, a in enumerate(clips)])
        if on_alpha is not None:
            on_alpha(float(alpha))
    names = list(rows[0][0])
    values = {n: np.array([[clip[n] for clip in row] for row in rows], dtype=np.float64) for n in names}
    return MeasureTable(vector.concept, [float(a) for a in alphas], values, prompt, seeds, seconds)
