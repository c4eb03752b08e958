"""What a target knob is measured in, per concept: the unit, the values a target may ask
and the span its 0..1 knob covers. Torch- and numpy-free: the OSC front builds its control
table from it. A concept with no row here has no target knob (no sensor reads it yet)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetUnit:
    sensor: str  # "pulse" (tempo from the audio's onsets) | "centroid" (timbre from the spectrum)
    unit: str  # what /steer/<concept>/target takes
    valid: tuple[float, float]  # a target outside this is refused
    knob: tuple[float, float]  # /steer/<concept>/target/knob 0..1 spans this
    prior_slope: float  # the measure's log change per unit alpha, before any is measured
    every_beats: float  # how often the loop reads its sensor, in beats of the clock


#: The toy's world plays 60-180 BPM and its lead's centroid spans roughly 600-2800 Hz
#: (benchmarks/RESULTS.md); a real model's knob span can be set per vector file later.
UNITS: dict[str, TargetUnit] = {
    # A tempo target is refused where the pulse sensor cannot read it (sensors.MIN_BPM..MAX_BPM).
    "tempo": TargetUnit("pulse", "BPM", (40.0, 240.0), (60.0, 180.0), prior_slope=0.3, every_beats=1.0),
    "timbre": TargetUnit("centroid", "Hz", (20.0, 16000.0), (600.0, 2800.0), prior_slope=0.3, every_beats=1.0),
}

#: The concept the tempo lock drives.
LOCK_CONCEPT = "tempo"

__all__ = ["LOCK_CONCEPT", "UNITS", "TargetUnit"]
