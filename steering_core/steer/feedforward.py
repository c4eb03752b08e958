"""Feed-forward for a target knob: the alpha its vector's calibration says reaches a target.

A vector's ``calibration`` (``evaluate/calibration.py``, ``docs/VECTORS.md``) holds its
concept's measure at every alpha of the sweep. Over the calibrated ``alpha_range`` that
measure rises with alpha (that is what the range was chosen for), so it can be read
backwards: on a new setpoint the loop jumps straight to the calibrated alpha for it, and
the PI (``controller.py``) only trims what this seed and this moment of the music differ
from the sweep's mean, instead of integrating the whole way there at its rate limit.
Pure Python: no torch, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeedForward:
    """The calibration's (alpha, measure) points over the calibrated range, measure rising."""

    alphas: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.alphas) != len(self.values) or len(self.alphas) < 2:
            raise ValueError("a feed-forward table needs two or more (alpha, measure) points")
        if any(b <= a for a, b in zip(self.alphas, self.alphas[1:], strict=False)) \
                or any(b <= a for a, b in zip(self.values, self.values[1:], strict=False)):
            raise ValueError("a feed-forward table's alphas and measures must both rise")

    @classmethod
    def of(cls, calibration: Mapping[str, Any] | None, measure: str,
           alpha_range: tuple[float, float]) -> FeedForward | None:
        """The table from a vector's calibration, or None where it cannot be read backwards
        (no such measure, fewer than two sweep points in the range, or a measure that does
        not rise strictly over it: there the PI alone drives)."""
        if not calibration:
            return None
        alphas, values = calibration.get("alphas"), (calibration.get("measures") or {}).get(measure)
        if not isinstance(alphas, Sequence) or not isinstance(values, Sequence) or len(alphas) != len(values):
            return None
        lo, hi = alpha_range
        points = sorted((float(a), float(v)) for a, v in zip(alphas, values, strict=True)
                        if lo - 1e-9 <= float(a) <= hi + 1e-9 and math.isfinite(float(v)))
        try:
            return cls(tuple(a for a, _ in points), tuple(v for _, v in points))
        except ValueError:
            return None

    def alpha_for(self, target: float) -> float:
        """The alpha whose calibrated measure is ``target`` (linear between sweep points);
        outside the calibrated reach, the nearest end."""
        xs, ys = self.alphas, self.values
        if not math.isfinite(target) or target <= ys[0]:
            return xs[0]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
            if target <= y1:
                return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
        return xs[-1]


__all__ = ["FeedForward"]
