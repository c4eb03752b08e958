"""What a target knob is measured in, per concept: the unit, the values a target may ask
and the span its 0..1 knob covers. Torch- and numpy-free: the OSC front builds its control
table from it. A concept with no row here has no target knob (no sensor reads it yet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetUnit:
    sensor: str  # "pulse" (tempo from the audio's onsets) | "centroid" (timbre from the spectrum)
    unit: str  # what /steer/<concept>/target takes
    valid: tuple[float, float]  # a target outside this is refused
    knob: tuple[float, float]  # /steer/<concept>/target/knob 0..1 spans this
    prior_slope: float  # the measure's log change per unit alpha, before any is measured
    every_beats: float  # how often the loop reads its sensor, in beats of the clock
    measure: str = ""  # the calibration measure (``calibration.measures``) in this unit


#: ``knob`` is the fallback span, for a vector without a calibration in the unit: the toy's
#: world plays 60-180 BPM and its lead's centroid spans roughly 600-2800 Hz (benchmarks/RESULTS.md).
UNITS: dict[str, TargetUnit] = {
    # A tempo target is refused where the pulse sensor cannot read it (sensors.MIN_BPM..MAX_BPM).
    "tempo": TargetUnit("pulse", "BPM", (40.0, 240.0), (60.0, 180.0), prior_slope=0.3, every_beats=1.0,
                        measure="drum_bpm"),
    "timbre": TargetUnit("centroid", "Hz", (20.0, 16000.0), (600.0, 2800.0), prior_slope=0.3, every_beats=1.0,
                         measure="centroid_hz"),
}

#: The concept the tempo lock drives.
LOCK_CONCEPT = "tempo"



def knob_span(concept: str, calibration: Mapping[str, Any] | None,
              alpha_range: tuple[float, float]) -> tuple[tuple[float, float], str | None]:
    """What ``/steer/<concept>/target/knob`` 0..1 spans: the concept's measured reach (its
    calibration's measure in the unit, at the ``alpha_range`` ends, interpolated on the
    sweep's grid), or the unit's fixed span and why not."""
    unit = UNITS[concept]
    if not calibration:
        return unit.knob, "the vector has no calibration"
    alphas, values = calibration.get("alphas"), (calibration.get("measures") or {}).get(unit.measure)
    if not isinstance(alphas, Sequence) or not isinstance(values, Sequence) or len(alphas) != len(values) \
            or len(alphas) < 2:
        return unit.knob, f"its calibration has no {unit.measure} measure"
    ends = tuple(_interp(float(a), [float(x) for x in alphas], [float(y) for y in values]) for a in alpha_range)
    lo, hi = max(ends[0], unit.valid[0]), min(ends[1], unit.valid[1])
    if not lo < hi:  # the measure does not rise over the range (a range never measured in this unit)
        return unit.knob, f"its calibrated {unit.measure} does not rise over alpha {alpha_range[0]:g}..{alpha_range[1]:g}"
    return (round(lo, 2), round(hi, 2)), None


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


__all__ = ["LOCK_CONCEPT", "UNITS", "TargetUnit", "knob_span"]
