"""A knob that sets a target: the PI controller that turns a measured value into alpha.

Plain addition of ``alpha * direction`` is a proportional-only controller with the
performer in the loop; a target knob closes the loop on a sensor instead (a probe on
the activations, a measure of the audio). This module is the maths alone, pure Python
with no torch and no clock, so it is tested against a simulated plant:

* **PI** in the plant's own units: the error is divided by the local slope of the
  measure against alpha, so ``kp`` is "the fraction of the error closed at once" and
  ``ki`` "per second", whatever the concept's unit.
* **Gain scheduling**: alpha's effect is not linear (the toy's tempo moves in 20 BPM
  buckets; a probe saturates), so the slope is estimated on line from the last
  updates (a least-squares line through recent (alpha, measured) pairs, kept only
  when alpha moved enough to tell); the gains follow it down where alpha acts
  steeply, never above the prior's.
* **Anti-windup**: the integral is clamped to the alpha range (it *is* the alpha the
  loop holds) and does not grow while the output is pinned at a bound; a loop may also
  integrate the error clipped (``integral_clip``), for a plant that answers late.
* **Rate limit** (alpha per second) and **deadband** (no correction for an error
  inside it), and alpha always within the calibrated ``alpha_range``.
* **Out of range**: when alpha sits at a bound and the error still asks for more for
  ``patience`` updates (readings made after the sensor's ``lag``: one that still hears the
  way to the bound says nothing of it), the setpoint is out of reach; the loop says so and holds the
  *nearest alpha*: of the alphas it has recently heard played (``observe`` adds one it did
  not set, the reading before a feed-forward jump), the one whose latest readings (a mean
  of up to ``PER_ALPHA``) came closest to the setpoint. That is the bound on a plant that rises to it, but not where
  the vector's effect turns over before the bound (on one seed of the toy the tempo
  vector slows the music past alpha 0): there, pushing on would move the music away.
  That alpha is chosen once, and held without integrating until the error has turned for
  ``patience`` updates (the setpoint came back within reach) or a jump (a new feed-forward)
  starts it afresh: no fighting, and no hopping on one stray reading.

``PhaseLock`` wraps the PI for the tempo lock: a phase-locked loop whose frequency
setpoint is the host's tempo pulled by the measured beat-phase error.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: What the error is measured in: "relative" (log ratio: tempo, centroid; a 5 % error is
#: the same size at 60 and at 180 BPM), "absolute", or "logit" (a probe's probability: its
#: logit is linear in what alpha adds to the activation, so the plant is near linear there).
ERROR_SCALES = ("relative", "absolute", "logit")
#: A probability is held this far inside 0..1 before its logit is taken.
LOGIT_EPS = 1e-4
#: Readings remembered for the nearest alpha (one per update): a few bars of a per-beat
#: loop, so a reading of music long gone does not decide where to hold.
MEMORY = 32
#: Alphas closer than this share of the range count as one when the nearest is chosen,
#: by the mean of up to PER_ALPHA of its latest readings.
SAME_ALPHA = 0.02
PER_ALPHA = 3


@dataclass(frozen=True)
class LoopSettings:
    """How one target loop behaves; the defaults suit a sensor read every beat."""

    alpha_range: tuple[float, float]
    #: The measure's slope against alpha, in error units per unit of alpha, before any is measured.
    prior_slope: float
    kp: float = 0.4  # fraction of the (slope-scaled) error corrected at once
    ki: float = 0.8  # fraction of the error integrated per second
    deadband: float = 0.01  # |error| below this is no error (hold): no hunting on sensor noise
    rate: float = 8.0  # alpha per second at most
    error_scale: str = "relative"
    #: The scheduled slope stays within [prior, prior * spread].
    slope_spread: float = 4.0
    #: Updates in a row at a bound with the error still pushing past it before "out of range".
    patience: int = 3
    #: Updates a reading still hears the alpha played before a move (the sensor's window
    #: over its update period): such readings neither count toward "out of range" (nor out of
    #: it) nor are remembered as the new alpha's. A 3-beat window read every beat: 3.
    lag: int = 0
    #: The integral takes the error clipped to +-this (error units): far from the setpoint it
    #: grows no faster than near it and the P term makes the move, so a plant that answers
    #: late does not wind the integral up on the way (inf: the whole error, the per-beat loops').
    integral_clip: float = math.inf

    def __post_init__(self) -> None:
        lo, hi = self.alpha_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"alpha_range must be finite with lo < hi, got {self.alpha_range}")
        if not (math.isfinite(self.prior_slope) and self.prior_slope != 0):
            raise ValueError(f"prior_slope must be finite and non-zero, got {self.prior_slope}")
        if self.error_scale not in ERROR_SCALES:
            raise ValueError(f"error_scale must be one of {ERROR_SCALES}, got {self.error_scale!r}")
        if self.patience < 1 or self.lag < 0:
            raise ValueError(f"patience must be >= 1 and lag >= 0, got {self.patience} and {self.lag}")
        for name in ("kp", "ki", "deadband", "rate", "integral_clip"):
            value = getattr(self, name)
            unbounded = name == "integral_clip"  # inf: the whole error
            if not (value >= 0 and (math.isfinite(value) or unbounded)):
                raise ValueError(f"{name} must be {'' if unbounded else 'finite and '}>= 0, got {value}")


@dataclass
class LoopState:
    """What a loop knows between updates (all of it in /status/json and the log)."""

    alpha: float
    integral: float  # the alpha the integral term holds
    slope: float
    error: float = 0.0
    #: "tracking", "settled" (inside the deadband), "out of range" (pinned at a bound).
    mode: str = "tracking"
    pinned: int = 0  # updates in a row at a bound with the error pushing past it
    updates: int = 0
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=6))
    #: (alpha played, reading in error units) of the last MEMORY readings: where "out of range" holds.
    heard: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MEMORY))
    #: While out of range, the sign of the error that put it there (+1: wants more), and the
    #: alpha chosen then to hold (chosen once: noisy readings must not make it hop).
    beyond: int = 0
    held: float = 0.0
    turned: int = 0  # readings in a row, while out of range, that say the setpoint is within reach
    #: Updates alpha has stayed within SAME_ALPHA of ``anchor``: past ``lag``, a reading heard it alone.
    steady: int = 0
    anchor: float = 0.0


def logit(p: float) -> float:
    q = min(max(p, LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(q / (1.0 - q))


def scaled(value: float, scale: str) -> float:
    """A measurement in the loop's error units: its log ("relative"), its logit, or itself."""
    if scale == "relative":
        return math.log(max(value, 1e-9))
    return logit(value) if scale == "logit" else value


def error_of(setpoint: float, measured: float, scale: str) -> float:
    """Setpoint minus measured, in the loop's error units (a log ratio for "relative")."""
    return scaled(setpoint, scale) - scaled(measured, scale)


class PIController:
    """One concept's loop: ``update`` takes a measurement and the time since the last, and
    returns the alpha to play. Pure: no clock, no threads; the caller owns it."""

    def __init__(self, settings: LoopSettings, alpha: float = 0.0) -> None:
        self.settings = settings
        lo, hi = settings.alpha_range
        start = min(max(alpha, lo), hi)
        # The alpha it starts from has been playing (a performer's knob): heard alone at once.
        self.state = LoopState(alpha=start, integral=start, slope=settings.prior_slope, anchor=start,
                               steady=settings.lag)

    def jump(self, alpha: float) -> float:
        """Feed-forward: play ``alpha`` (within the range) at once, with the integral holding
        it, so later updates trim from there (bumpless: no stored error kicks it away)."""
        lo, hi = self.settings.alpha_range
        st = self.state
        st.alpha = st.integral = st.anchor = min(max(alpha, lo), hi)
        st.pinned, st.mode, st.beyond, st.turned, st.steady = 0, "tracking", 0, 0, 0
        return st.alpha

    def observe(self, alpha: float, measured: float) -> None:
        """Remember that ``alpha`` played ``measured`` (also a reading this loop did not act
        on, such as the one before a feed-forward jump): a candidate for the nearest alpha.
        Only once alpha has stayed put for the sensor's ``lag``: before, the reading also
        heard the alpha before the last move."""
        if self.state.steady >= self.settings.lag and math.isfinite(alpha) and math.isfinite(measured):
            self.state.heard.append((alpha, scaled(measured, self.settings.error_scale)))

    def nearest(self, setpoint: float) -> float:
        """Of the alphas heard lately, the one whose latest readings (the mean of up to
        ``PER_ALPHA``: one misread must not decide) are closest to ``setpoint``; the alpha
        played now when none was heard."""
        s, st = self.settings, self.state
        same = self._same_alpha()
        latest: list[tuple[float, list[float]]] = []  # (alpha, its latest readings), newest first
        for alpha, reading in reversed(st.heard):
            mine = next((r for a, r in latest if abs(alpha - a) <= same), None)
            if mine is None:
                latest.append((alpha, [reading]))
            elif len(mine) < PER_ALPHA:
                mine.append(reading)
        if not latest:
            return st.alpha
        aim = scaled(setpoint, s.error_scale)
        return min(latest, key=lambda pair: abs(aim - sum(pair[1]) / len(pair[1])))[0]

    def update(self, setpoint: float, measured: float, dt: float) -> float:
        st = self.state
        if not (math.isfinite(setpoint) and math.isfinite(measured) and math.isfinite(dt)) or dt <= 0:
            return st.alpha  # a sensor that could not read holds the knob
        alone = st.steady >= self.settings.lag  # the reading heard the alpha played now, and no other
        alpha = self._update(setpoint, measured, dt, alone)
        if abs(alpha - st.anchor) > self._same_alpha():
            st.anchor, st.steady = alpha, 0
        else:
            st.steady += 1
        return alpha

    def _update(self, setpoint: float, measured: float, dt: float, alone: bool) -> float:
        s, st = self.settings, self.state
        lo, hi = s.alpha_range
        self._schedule(measured)
        error = error_of(setpoint, measured, s.error_scale)
        st.error = error
        st.updates += 1
        # The measurement was made under the alpha played before this update: that pair is
        # what the slope is fitted to.
        st.history.append((st.alpha, measured))
        self.observe(st.alpha, measured)  # remembered only if it heard this alpha alone
        if st.mode == "out of range":
            # Beyond reach the same way: hold, do not integrate. Back within reach only after
            # ``patience`` readings of the held alpha say so, as it went out: one stray reading
            # must not undo it.
            if alone:
                st.turned = 0 if error * st.beyond > 0 and abs(error) > s.deadband else st.turned + 1
            if st.turned < s.patience:
                return self._hold(dt)
            st.mode, st.pinned, st.beyond, st.turned = "tracking", 0, 0, 0  # the PI trims from here
        if abs(error) <= s.deadband:
            st.mode, st.pinned = "settled", 0
            return st.alpha
        push = error / st.slope  # alpha the whole error asks for
        # Anti-windup: the integral is the alpha held, so it stays inside the range; at a
        # bound it does not grow further in the direction the bound stops.
        clipped = max(-s.integral_clip, min(s.integral_clip, error)) / st.slope
        st.integral = min(max(st.integral + s.ki * dt * clipped, lo), hi)
        wanted = st.integral + s.kp * push
        limit = s.rate * dt
        alpha = min(max(wanted, st.alpha - limit, lo), st.alpha + limit, hi)
        at_bound = (alpha >= hi and push > 0) or (alpha <= lo and push < 0)
        if not at_bound:
            st.pinned = 0
        elif alone:  # a reading made while the sensor still heard the way there says nothing of the bound
            st.pinned += 1
        st.alpha = alpha
        if st.pinned < s.patience:
            st.mode = "tracking"
            return alpha
        st.mode, st.beyond, st.held = "out of range", 1 if push > 0 else -1, self.nearest(setpoint)
        return self._hold(dt)

    def _same_alpha(self) -> float:
        """Alphas closer than this play the same, for the sensor's lag and the nearest alpha."""
        lo, hi = self.settings.alpha_range
        return SAME_ALPHA * (hi - lo)

    def _hold(self, dt: float) -> float:
        """Out of range: move (at the rate limit) to the held alpha, the integral with it."""
        st, limit = self.state, self.settings.rate * dt
        st.alpha = st.integral = min(max(st.held, st.alpha - limit), st.alpha + limit)
        return st.alpha

    def _schedule(self, measured: float) -> None:
        """The slope from the last updates' (alpha, measured) pairs, within bounds of the
        prior; the error's units, so a relative measure fits log(measured)."""
        s, st = self.settings, self.state
        pairs = [(a, scaled(m, s.error_scale)) for a, m in st.history]
        if len(pairs) < 3:
            return
        mean_a = sum(a for a, _ in pairs) / len(pairs)
        mean_m = sum(m for _, m in pairs) / len(pairs)
        var = sum((a - mean_a) ** 2 for a, _ in pairs)
        span = s.alpha_range[1] - s.alpha_range[0]
        if var < (0.05 * span) ** 2:  # alpha barely moved: the pairs say nothing about the slope
            return
        slope = sum((a - mean_a) * (m - mean_m) for a, m in pairs) / var
        prior = s.prior_slope
        if slope * prior <= 0:  # noise, or a lag that ran the other way: keep the last estimate
            return
        # Never more aggressive than the prior: where alpha acts more steeply the gains come
        # down (the loop would overshoot there); where it acts less, the prior's gains hold,
        # as pairs read through a sensor's lag can make a slope look flatter than it is.
        bounded = min(max(abs(slope), abs(prior)), abs(prior) * s.slope_spread)
        st.slope = math.copysign(0.5 * abs(st.slope) + 0.5 * bounded, prior)

    def status(self) -> dict[str, object]:
        st = self.state
        return {"alpha": round(st.alpha, 4), "integral": round(st.integral, 4), "error": round(st.error, 4),
                "slope": round(st.slope, 4), "mode": st.mode, "updates": st.updates,
                "held": round(st.held, 4) if st.mode == "out of range" else None}


@dataclass(frozen=True)
class PhaseLockSettings:
    #: Fraction of a beat's phase error turned into tempo pull (per update).
    phase_gain: float = 0.5
    #: The pull never asks for more than this fraction off the host's tempo.
    max_pull: float = 0.08


def locked_setpoint(host_bpm: float, phase_error_s: float, settings: PhaseLockSettings = PhaseLockSettings()) -> float:
    """The tempo to aim at so the audio's beats come onto the host's: the host's tempo, sped
    up while the audio's beats come late (``phase_error_s`` > 0) and slowed while early."""
    if not (math.isfinite(host_bpm) and host_bpm > 0):
        raise ValueError(f"host tempo must be a positive number, got {host_bpm}")
    if not math.isfinite(phase_error_s):
        return host_bpm
    beats = phase_error_s * host_bpm / 60.0
    pull = max(-settings.max_pull, min(settings.max_pull, settings.phase_gain * beats))
    return host_bpm * (1.0 + pull)


__all__ = ["ERROR_SCALES", "LoopSettings", "LoopState", "PIController", "PhaseLockSettings", "error_of",
           "locked_setpoint", "logit", "scaled"]
