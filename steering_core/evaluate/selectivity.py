"""Selectivity: what each knob moves besides its own concept, and a vector that moves less.

``cross_effects`` is the cross-effect matrix: one row per concept, one column per measure
(onset rate, centroid, RMS; on the toy also the drum tempo, lead shade and the presence
of each instrument, read from the codes), each entry the measure's change from the
bottom of the knob's range to the top: relative to its value at alpha 0 for the
continuous measures, in absolute share of frames for the presences (0 at alpha 0 is
common there).

``selective`` makes a vector selective by measurement. The candidates are the vector as
it is; the vector orthogonalised against every other concept's direction (one at a time,
and all together), which removes what the directions share; and the vector *decoupled*
from each other concept by the measured cross-effects: ``v - k * other`` with ``k`` the
ratio of the slopes (per alpha, near 0) at which ``v`` and ``other`` move the other
concept's own measure, so that turning the knob also turns the other concept back by
what it dragged along (a decoupler, as a multi-variable controller has). Each candidate
is calibrated (``calibration.py``) and the one kept is the one with the least off-target
effect per unit of own effect, among those that keep at least ``min_own_kept`` of the
original's own effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from steering_core.evaluate.calibration import OWN_MEASURE, Calibration, apply, calibrate
from steering_core.evaluate.measures import MeasureTable
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector

CONTINUOUS = ("onset_rate", "centroid_hz", "rms", "drum_bpm", "lead_shade")
PRESENCE = ("lead_presence", "piano_presence", "bass_presence")


def effect_row(table: MeasureTable, alpha_range: tuple[float, float]) -> dict[str, float]:
    """Each measure's change over ``alpha_range`` (two grid points of ``table``)."""
    lo, hi = (table.alphas.index(a) for a in alpha_range)
    row = {}
    for name in CONTINUOUS + PRESENCE:
        if name not in table.values:
            continue
        means = table.means(name)
        change = float(means[hi] - means[lo])
        if name in CONTINUOUS:
            change /= max(abs(table.at_zero(name)), 1e-9)
        row[name] = round(change, 4) if np.isfinite(change) else float("nan")
    return row


def cross_effects(calibrations: Sequence[Calibration]) -> dict[str, dict[str, float]]:
    """The matrix, ``{concept: {measure: change over its calibrated range}}``."""
    return {c.concept: effect_row(c.table, c.alpha_range) for c in calibrations}


def off_target(row: dict[str, float], own: str, guarded: Sequence[str]) -> float:
    """Off-target movement per unit of own movement (the guarded measures, summed)."""
    return sum(abs(row[m]) for m in guarded if m in row) / max(abs(row[own]), 1e-9)


@dataclass(frozen=True)
class Selection:
    vector: SteeringVector
    chosen: str
    candidates: dict[str, dict[str, Any]]  # label -> calibrated range, effect row, off-target score


def slope(cal: Calibration, measure: str) -> float:
    """d measure / d alpha over the calibrated range (least squares on the grid means)."""
    lo, hi = (cal.table.alphas.index(a) for a in cal.alpha_range)
    x = np.array(cal.table.alphas[lo:hi + 1])
    y = cal.table.means(measure)[lo:hi + 1]
    return float(np.polyfit(x, y, 1)[0]) if x.size > 1 and np.isfinite(y).all() else 0.0


def selective_candidates(vector: SteeringVector, others: Sequence[SteeringVector],
                         own_cal: Calibration | None = None,
                         other_cals: dict[str, Calibration] | None = None) -> dict[str, SteeringVector]:
    """The vector; it orthogonalised against each other concept and all of them; and, where
    calibrations are given, it decoupled from each other concept by the measured slopes."""
    out = {"as is": vector}
    for other in others:
        out[f"⊥ {other.concept}"] = vector.orthogonalized(other)
    if len(others) > 1:
        v = vector
        for other in _orthonormal(others):
            v = v.orthogonalized(other)
        out["⊥ " + " + ".join(o.concept for o in others)] = v
    for other in others:
        oc = (other_cals or {}).get(other.concept)
        if own_cal is None or oc is None:
            continue
        s_other = slope(oc, oc.own)
        k = slope(own_cal, oc.own) / s_other if abs(s_other) > 1e-12 else 0.0
        if k != 0 and np.isfinite(k):
            out[f"- {k:.3g} x {other.concept}"] = vector + other * (-k)
    return {k: dataclasses.replace(v, concept=vector.concept, probe=vector.probe) for k, v in out.items()}


def _orthonormal(vectors: Sequence[SteeringVector]) -> list[SteeringVector]:
    """Gram-Schmidt per layer, so removing each in turn removes their whole span."""
    basis: list[SteeringVector] = []
    for v in vectors:
        for b in basis:
            v = v.orthogonalized(b)
        basis.append(v)
    return basis


def selective(handle: MusicGenHandle, vector: SteeringVector, others: Sequence[SteeringVector], *,
              min_own_kept: float = 0.8, other_cals: dict[str, Calibration] | None = None,
              **calibrate_kwargs: Any) -> Selection:
    """The most selective calibrated candidate (see the module doc). ``other_cals``: the
    other concepts' calibrations where known (measured here otherwise, for the decoupling)."""
    base = calibrate(handle, vector, **calibrate_kwargs)
    cals = dict(other_cals or {})
    for other in others:
        if other.concept not in cals and other.concept in OWN_MEASURE:
            cals[other.concept] = calibrate(handle, other, **calibrate_kwargs)
    results: dict[str, tuple[SteeringVector, Calibration]] = {"as is": (vector, base)}
    for label, candidate in selective_candidates(vector, others, base, cals).items():
        if label not in results:
            results[label] = (candidate, calibrate(handle, candidate, **calibrate_kwargs))
    base_own = abs(effect_row(base.table, base.alpha_range)[base.own])
    summary: dict[str, dict[str, Any]] = {}
    for label, (_, cal) in results.items():
        row = effect_row(cal.table, cal.alpha_range)
        summary[label] = {"alpha_range": list(cal.alpha_range), "found": cal.found, "effects": row,
                          "off_target": round(off_target(row, cal.own, cal.others), 4),
                          "own_kept": round(abs(row[cal.own]) / max(base_own, 1e-9), 4)}
    eligible = [k for k, s in summary.items() if results[k][1].found and s["own_kept"] >= min_own_kept]
    chosen = min(eligible, key=lambda k: summary[k]["off_target"]) if eligible else "as is"
    candidate, cal = results[chosen]
    return Selection(apply(candidate, cal), chosen, summary)
