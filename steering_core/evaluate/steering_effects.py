"""Does a knob do what it says? Measured effects of prompts and of steering, on audio.

Two questions, each answered with numbers from the rendered audio (``evaluate/metrics.py``):

* ``conditioning``: generated from captions alone, do the positive prompts of a concept
  score higher on its metric than the negative ones (onset rate for tempo, spectral
  centroid for timbre)?
* ``steering_sweep``: with one prompt, does the metric move monotonically with the
  knob's alpha (Spearman of the mean curve), and do the ends differ by more than the
  spread across seeds?

Seeds are batch rows: one stream renders every seed of an alpha at once, each row
drawing its own samples from the stream's generator, so ``seeds`` rows are ``seeds``
independent renders at the cost of one batched run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from steering_core.audio import spectral_centroid
from steering_core.codec.streaming import decode
from steering_core.evaluate.metrics import estimate_tempo, onset_rate
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream

Metric = Callable[[np.ndarray, int], float]
METRICS: dict[str, Metric] = {"onset_rate": onset_rate, "centroid_hz": spectral_centroid, "tempo_bpm": estimate_tempo}
#: What each shipped concept is heard as.
CONCEPT_METRIC = {"tempo": "onset_rate", "timbre": "centroid_hz"}


def render_rows(handle: MusicGenHandle, prompts: Sequence[str], seconds: float, *, seed: int = 0,
                steerer: Steerer | None = None) -> list[np.ndarray]:
    """One clip per prompt, [channels, samples] each, from one batched stream."""
    stream = MusicStream(handle, list(prompts), seed=seed, steerer=steerer)
    with stream.steering():
        codes = stream.generate_frames(max(1, round(seconds * handle.frame_rate)))
    return [decode(handle, codes[i:i + 1])[0] for i in range(codes.shape[0])]


@dataclass(frozen=True)
class Conditioning:
    metric: str
    positive: list[float]
    negative: list[float]

    @property
    def ratio(self) -> float:
        return float(np.mean(self.positive)) / max(float(np.mean(self.negative)), 1e-9)

    def to_json(self) -> dict[str, object]:
        return {"metric": self.metric, "positive_mean": round(float(np.mean(self.positive)), 3),
                "negative_mean": round(float(np.mean(self.negative)), 3), "ratio": round(self.ratio, 3),
                "n": len(self.positive)}


def conditioning(handle: MusicGenHandle, positive: Sequence[str], negative: Sequence[str], metric: str,
                 seconds: float = 4.0, seed: int = 0) -> Conditioning:
    measure = METRICS[metric]
    pos = [measure(a, handle.sample_rate) for a in render_rows(handle, positive, seconds, seed=seed)]
    neg = [measure(a, handle.sample_rate) for a in render_rows(handle, negative, seconds, seed=seed)]
    return Conditioning(metric, pos, neg)


@dataclass(frozen=True)
class Sweep:
    """A metric against alpha: ``values`` [alphas, seeds]."""

    concept: str
    metric: str
    alphas: list[float]
    values: np.ndarray

    @property
    def means(self) -> np.ndarray:
        return self.values.mean(axis=1)

    @property
    def seed_spread(self) -> float:
        """The typical standard deviation across seeds at one alpha."""
        return float(self.values.std(axis=1).mean())

    @property
    def spearman(self) -> float:
        from scipy.stats import spearmanr

        rho = spearmanr(self.alphas, self.means).statistic
        # A rank correlation is a ratio of whole numbers (one neighbour swap in five points
        # is exactly 0.9), which float arithmetic can land a hair below: round that off.
        return 0.0 if not np.isfinite(rho) else round(float(rho), 9)

    @property
    def end_gap(self) -> float:
        """Mean at the largest alpha minus the mean at the smallest."""
        return float(self.means[-1] - self.means[0])

    def summary(self) -> str:
        return (f"{self.concept}: {self.metric} {self.means[0]:.2f} -> {self.means[-1]:.2f} over alpha "
                f"{self.alphas[0]:+g}..{self.alphas[-1]:+g} (Spearman {self.spearman:+.2f}, "
                f"ends differ by {abs(self.end_gap):.2f} against a seed spread of {self.seed_spread:.2f})")

    def to_json(self) -> dict[str, object]:
        return {"concept": self.concept, "metric": self.metric, "alphas": self.alphas,
                "mean": self.means.round(4).tolist(), "std": self.values.std(axis=1).round(4).tolist(),
                "values": self.values.round(4).tolist(), "spearman": round(self.spearman, 4),
                "end_gap": round(self.end_gap, 4), "seed_spread": round(self.seed_spread, 4)}


def steering_sweep(handle: MusicGenHandle, vector: SteeringVector, prompt: str, alphas: Sequence[float], *,
                   metric: str | None = None, seeds: int = 5, seconds: float = 4.0, seed: int = 0,
                   progress: Callable[[float], None] | None = None) -> tuple[Sweep, list[list[np.ndarray]]]:
    """The sweep, and the audio [alpha][seed] it was measured on."""
    metric = metric or CONCEPT_METRIC.get(vector.concept, "centroid_hz")
    measure = METRICS[metric]
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    values = np.zeros((len(alphas), seeds))
    clips = []
    for i, alpha in enumerate(alphas):
        steerer.set_alpha(vector.concept, float(alpha))
        rows = render_rows(handle, [prompt] * seeds, seconds, seed=seed, steerer=steerer)
        values[i] = [measure(a, handle.sample_rate) for a in rows]
        clips.append(rows)
        if progress is not None:
            progress(alpha)
    return Sweep(vector.concept, metric, [float(a) for a in alphas], values), clips
