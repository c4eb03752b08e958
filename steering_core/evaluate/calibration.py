"""Calibrated knob ranges: the alphas over which a vector does what its knob says.

For a model and a vector, ``calibrate`` sweeps alpha over a grid that contains 0
(``measures.measure_sweep``) and keeps the widest interval ``[lo, hi]`` around 0 where

* the concept's own measure (onset rate for tempo, spectral centroid for timbre) rises
  with alpha, as a listener would judge it: the per-alpha means over the interval's grid
  points have a Spearman of at least ``min_spearman``, never step back by more than
  ``max_backstep`` standard errors of a mean (a dip within the seeds' noise is not heard
  as the knob turning back), and the ends lie further apart than the typical spread
  across seeds and by at least ``min_own_change`` of the value at alpha 0 (a knob that
  moves its concept by a hair is not a knob); and each end's last grid step still moves
  it, by at least ``min_end_step`` of the interval's whole change (past where the concept
  saturates, the knob would turn and nothing would be heard);
* every other measure (onset rate, centroid, RMS: all but the own one) stays within
  ``max_other_change`` of its value at alpha 0, at every grid point of the interval;
* nothing collapses at any grid point, in any seed: not silence (RMS under
  ``min_rms``), not noise (spectral flatness over ``max_flatness``), not a stuck loop
  (the second half of a clip made of ``max_stuck_frames`` distinct code frames or fewer).

That interval becomes the vector's ``alpha_range`` (what the 0..1 knob spans) and the
measurement its ``calibration`` metadata (``docs/VECTORS.md``), with everything needed to
run it again. On a model whose codes can be read back (the toy) the table also holds what
was played (drum tempo, lead shade, piano and bass), reported beside the audio measures.

``choose_layers`` runs the same calibration on each candidate layer set and keeps the one
whose calibrated range moves the own measure furthest: layer choice is measured too.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from steering_core.errors import UserError
from steering_core.evaluate.measures import STUCK_MAX_DISTINCT, MeasureTable, measure_sweep
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector

#: The measure each shipped concept is heard as; the others are what it must leave alone.
OWN_MEASURE = {"tempo": "onset_rate", "timbre": "centroid_hz"}
GUARDED = ("onset_rate", "centroid_hz", "rms")
#: The default grid: fine near 0, where the toy's concepts already move, coarser beyond.
DEFAULT_STEPS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
METHOD = "sweep-interval-v1"


@dataclass(frozen=True)
class Bounds:
    min_spearman: float = 0.9
    max_backstep: float = 2.0
    min_own_change: float = 0.1
    min_end_step: float = 0.05
    max_other_change: float = 0.2
    min_rms: float = 1e-3
    max_flatness: float = 0.3
    max_stuck_frames: int = STUCK_MAX_DISTINCT


@dataclass(frozen=True)
class Calibration:
    """One calibration: the range found and everything it was found from."""

    concept: str
    own: str
    others: tuple[str, ...]
    alpha_range: tuple[float, float]
    found: bool  # False: no interval around 0 passed; the range is the grid's first step
    reason: str
    table: MeasureTable
    bounds: Bounds
    layers: tuple[int, ...]
    seed: int = 0

    @property
    def own_change(self) -> float:
        """How far the own measure moves over the range, relative to its value at alpha 0."""
        means = self.table.means(self.own)
        lo, hi = (self.table.alphas.index(a) for a in self.alpha_range)
        return float((means[hi] - means[lo]) / max(abs(self.table.at_zero(self.own)), 1e-9))

    def metadata(self) -> dict[str, Any]:
        """The vector file's ``calibration`` object (docs/VECTORS.md)."""
        return {"method": METHOD, "found": self.found, "reason": self.reason, "own_measure": self.own,
                "guarded_measures": list(self.others), "layers": list(self.layers), "prompt": self.table.prompt,
                "alphas": self.table.alphas, "seeds": self.table.seeds, "seed": self.seed,
                "seconds": self.table.seconds, "bounds": dataclasses.asdict(self.bounds),
                "measures": self.table.to_json()["mean"],
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}

    def line(self) -> str:
        lo, hi = self.alpha_range
        verdict = "" if self.found else " (NOT FOUND: " + self.reason + ")"
        return (f"{self.concept} on layers {list(self.layers)}: alpha {lo:+g}..{hi:+g}, {self.own} "
                f"{self._at(lo):.3g} -> {self._at(hi):.3g} ({self.own_change:+.0%} of alpha 0){verdict}")

    def _at(self, alpha: float) -> float:
        return float(self.table.means(self.own)[self.table.alphas.index(alpha)])


def alpha_grid(span: float, steps: Sequence[float] = DEFAULT_STEPS) -> list[float]:
    """0 and ±each step up to ``span``, sorted."""
    if not span > 0:
        raise UserError(f"the calibration span must be positive, got {span}")
    kept = sorted({float(s) for s in steps if 0 < s <= span} | {float(span)})
    return sorted([-s for s in kept] + [0.0] + kept)


def _spearman(x: Sequence[float], y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(y) == 0:
        return 0.0
    rho = spearmanr(x, y).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def point_faults(table: MeasureTable, own: str, others: Sequence[str], b: Bounds) -> list[str]:
    """What is wrong at each grid point on its own ('' where nothing is)."""
    faults = []
    for i, _ in enumerate(table.alphas):
        v = {k: table.values[k][i] for k in table.values}
        why = []
        if (v["rms"] < b.min_rms).any():
            why.append("silence")
        if (v["flatness"] > b.max_flatness).any():
            why.append("noise")
        if (v["distinct_frames"] <= b.max_stuck_frames).any():
            why.append("stuck loop")
        for name in others:
            ref = table.at_zero(name)
            if abs(table.means(name)[i] / max(abs(ref), 1e-9) - 1) > b.max_other_change:
                why.append(f"{name} off by more than {b.max_other_change:.0%}")
        faults.append(", ".join(why))
    return faults


def find_range(table: MeasureTable, own: str, others: Sequence[str], b: Bounds) -> tuple[int, int, str]:
    """Grid indices (i, j) of the widest passing interval with i < zero < j, or (-1, -1, why)."""
    alphas, zero = table.alphas, table.alphas.index(0.0)
    faults = point_faults(table, own, others, b)
    means, spread = table.means(own), table.values[own].std(axis=1)
    stderr = spread / np.sqrt(table.seeds)
    ref = table.at_zero(own)
    best: tuple[float, float, int, int] | None = None
    for i in range(zero - 1, -1, -1):
        if faults[i]:
            break
        for j in range(zero + 1, len(alphas)):
            if faults[j]:
                break
            rho = _spearman(alphas[i:j + 1], means[i:j + 1])
            gap = means[j] - means[i]
            if rho < b.min_spearman or gap <= spread[i:j + 1].mean() or gap < b.min_own_change * abs(ref):
                continue
            seg = means[i:j + 1]
            backstep = float((np.maximum.accumulate(seg) - seg).max())
            if backstep > b.max_backstep * stderr[i:j + 1].mean():
                continue
            if min(seg[1] - seg[0], seg[-1] - seg[-2]) < b.min_end_step * gap:
                continue
            key = (alphas[j] - alphas[i], gap)
            if best is None or key > best[:2]:
                best = (*key, i, j)
    if best is None:
        near = [(alphas[k], faults[k]) for k in (zero - 1, zero + 1) if faults[k]]
        if near:
            return -1, -1, "; ".join(f"at alpha {a:+g}: {f}" for a, f in near)
        return -1, -1, (f"{own} does not rise with alpha (Spearman >= {b.min_spearman:g}, no step back past "
                        f"{b.max_backstep:g} standard errors, ends apart by more than the seed spread and "
                        f"{b.min_own_change:.0%}) over any interval around 0")
    return best[2], best[3], "widest passing interval"


def calibrate(handle: MusicGenHandle, vector: SteeringVector, *, prompt: str, span: float = 8.0,
              alphas: Sequence[float] | None = None, seeds: int = 3, seconds: float = 3.0, seed: int = 0,
              own: str | None = None, bounds: Bounds | None = None,
              on_alpha: Callable[[float], object] | None = None) -> Calibration:
    """Measure ``vector`` on ``handle`` and find its calibrated range (see the module doc)."""
    own = own or OWN_MEASURE.get(vector.concept)
    if own is None:
        raise UserError(f"no measure is known for concept {vector.concept!r}: calibration knows "
                        f"{', '.join(OWN_MEASURE)} (its own measure says what the knob should move)")
    grid = [float(a) for a in (alphas if alphas is not None else alpha_grid(span))]
    if 0.0 not in grid or len(grid) < 3 or grid != sorted(set(grid)):
        raise UserError("calibration alphas must be increasing, distinct, include 0 and one alpha either side")
    b = bounds or Bounds()
    table = measure_sweep(handle, vector, grid, prompt=prompt, seeds=seeds, seconds=seconds, seed=seed,
                          on_alpha=on_alpha)
    others = tuple(m for m in GUARDED if m != own)
    i, j, reason = find_range(table, own, others, b)
    found = i >= 0
    if not found:  # the knob still turns, over the smallest step measured, and the file says why
        zero = grid.index(0.0)
        i, j = zero - 1, zero + 1
    return Calibration(vector.concept, own, others, (grid[i], grid[j]), found, reason, table, b,
                       vector.layers, seed)


def apply(vector: SteeringVector, cal: Calibration) -> SteeringVector:
    """The vector with its calibrated range and how it was measured."""
    return dataclasses.replace(vector, alpha_range=cal.alpha_range, calibration=cal.metadata())


def choose_layers(handle: MusicGenHandle, candidates: Sequence[SteeringVector], **kwargs: Any) -> \
        tuple[SteeringVector, Calibration, list[Calibration]]:
    """Calibrate every candidate (one concept on different layers) and keep the one whose
    calibrated range moves its own measure furthest; a found range beats one not found."""
    if not candidates:
        raise UserError("no candidate layers to calibrate")
    results = [calibrate(handle, v, **kwargs) for v in candidates]
    best = max(range(len(results)), key=lambda k: (results[k].found, results[k].own_change))
    return apply(candidates[best], results[best]), results[best], results
