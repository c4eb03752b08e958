"""Probe targets (issue 19 item 3): alpha driven until the concept's own probe reads a probability.

SMITIN's self-monitoring: a concept whose vector carries a logistic probe
(``steering_core.steer.probe``) reads, every decode step, how present the concept is on its
steered layer (``steering_core.stream.probe_tap.ProbeTaps``, set on the stream before its
first step). ``/steer/<c>/target/probe p`` closes a PI loop on that reading: add until the
probe says the concept is there, and no more. The loop runs on the engine thread inside
``TargetLoop.heard``, every ``PROBE_EVERY_S`` of generated audio (a few steps, not a beat:
the probe needs no window of audio), on the logit scale (a probe's logit moves about linearly
with alpha), with the controller's deadband, rate limit, anti-windup and alpha range.
The alphas it sets go back as ordinary alpha changes and are logged with the loop's state,
so a replay plays the logged alphas and needs no probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from steering_core.steer.controller import LoopSettings, PIController
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.probe_tap import ProbeTaps

#: Generated audio seconds between two updates of a probe loop (a few decode steps).
PROBE_EVERY_S = 0.2
#: The probe's logit change per unit of alpha before the loop has measured one. Positive:
#: a probe is fitted on the vector's own activations, so pushing along the vector raises it.
PROBE_PRIOR_SLOPE = 2.0
#: The loop reads the probe smoothed over about this many seconds of audio (an exponential
#: mean of its logit, one reading per chunk): one step's reading of one position swings with
#: each token, the probe was fitted on means over frames.
PROBE_SMOOTH_S = 1.0
#: Slower integration than the per-beat sensor loops: the smoothed reading lags, a faster
#: integral overshoots on it.
PROBE_KI = 0.4
#: The integral takes the logit error clipped to this: after a step the reading answers late
#: (its smoothing, and music that stays bright once made), and the whole step's error
#: integrated over that wait is what overshot. Clipped harder, the loop is slow to answer
#: the music's own drift (benchmarks/RESULTS.md compares them).
PROBE_INTEGRAL_CLIP = 1.0


def attach_probe_taps(stream: Any, vectors: Sequence[SteeringVector]) -> ProbeTaps | None:
    """Set ``stream.taps`` to read the probes the loaded vectors carry; None when none carries one.
    Before the stream's first step: a captured graph holds the taps it was traced with."""
    probes = {v.concept: v.probe for v in vectors if v.probe is not None}
    if not probes:
        return None
    handle = stream.handle
    taps = ProbeTaps(probes, int(stream.batch), int(handle.num_layers), handle.device)
    stream.taps = taps
    return taps


class ProbeTarget:
    """One concept's probe loop: its setpoint (a probability), reading and controller."""

    def __init__(self, alpha_range: tuple[float, float], alpha: float, setpoint: float) -> None:
        self.setpoint = setpoint
        # The reading is smoothed exponentially over PROBE_SMOOTH_S: three of those after a
        # move, the alpha before still weighs 5 % in it.
        lag = math.ceil(3 * PROBE_SMOOTH_S / PROBE_EVERY_S)
        self.controller = PIController(LoopSettings(alpha_range, PROBE_PRIOR_SLOPE, ki=PROBE_KI, error_scale="logit",
                                                    integral_clip=PROBE_INTEGRAL_CLIP,
                                                    lag=lag), alpha)
        self.measured = math.nan  # the smoothed probability the loop holds at its setpoint
        self.raw = math.nan  # the last step's reading
        self._logit = math.nan
        self.since = 0.0  # audio seconds heard since the last update

    def update(self, seconds: float, reading: float | None) -> float | None:
        """``seconds`` more audio heard, the probe's probability now; the alpha to set, if it moved."""
        self.since += seconds
        if reading is not None and 0.0 < reading < 1.0:
            self.raw, z = reading, math.log(reading / (1.0 - reading))
            keep = math.exp(-seconds / PROBE_SMOOTH_S)
            self._logit = z if not math.isfinite(self._logit) else keep * self._logit + (1.0 - keep) * z
            self.measured = 1.0 / (1.0 + math.exp(-self._logit))
        if self.since < PROBE_EVERY_S or not math.isfinite(self.measured):
            return None
        dt, self.since = self.since, 0.0
        return self.controller.update(self.setpoint, self.measured, dt)

    def status(self) -> dict[str, Any]:
        def r(x: float) -> float | None:
            return None if not math.isfinite(x) else round(x, 3)
        return {"setpoint": self.setpoint, "aim": self.setpoint, "unit": "probability",
                "measured": r(self.measured), "raw": r(self.raw), "phase_ms": None, **self.controller.status()}


__all__ = ["PROBE_EVERY_S", "ProbeTarget", "attach_probe_taps"]
