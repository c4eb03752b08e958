"""The tempo of a MIDI clock from its ticks' arrival times (24 ticks to a quarter note).

A straight line, time against tick number, fitted by least squares through the last
``window`` ticks: its slope is the tick period, and the line is the jitter-free time of
each tick. A real interface jitters each tick by a millisecond or so (USB frames, JACK
periods, a busy scheduler); fitting a line through many ticks averages that away, where
the interval between two ticks, or an average of intervals (which is the same as the
first and last tick alone), keeps far more of it.

A tempo change must not wait for the window to slide past the old tempo: a tick that
lands off the line by more than ``jump_sigmas`` times the line's own scatter (at least
``floor_s``) is held aside, and ``jump_run`` held ticks in a row on the same side decide
what they were:
- moving away from the line tick by tick, on a plausible line of their own (a period
  within a factor of two of the old one): a new tempo; the line starts again from them;
- a steady offset of whole periods: ticks were lost on the way (a JACK client that
  misses a cycle loses its MIDI); they are counted as if they had come, so the song
  position holds (only where the scatter of the ticks on the line, a JACK cycle's
  rounding included, is under half a period: else the two cannot be told apart);
- any other steady offset: the line was too sure of itself (a coarse period's
  rounding, as JACK's stamps per cycle give): they join it;
- closing in on the line: a burst released at once after a stall, whose times are not
  the ticks'; they stay out.
Ticks held aside that the next good tick contradicts were late or early ones: they are
dropped from the fit (never from the count).
"""

from __future__ import annotations

import math
from collections import deque

TICKS_PER_QUARTER = 24


def _line(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares ``t = a + b * n`` through ``points``: (a, b, rms residual)."""
    count = len(points)
    mean_n = sum(n for n, _ in points) / count
    mean_t = sum(t for _, t in points) / count
    snn = sum((n - mean_n) ** 2 for n, _ in points)
    snt = sum((n - mean_n) * (t - mean_t) for n, t in points)
    b = snt / snn if snn else 0.0
    a = mean_t - b * mean_n
    rms = math.sqrt(sum((t - a - b * n) ** 2 for n, t in points) / count)
    return a, b, rms


class TickTempo:
    """Feed it each tick's arrival time (``add``); read ``period_s``, ``bpm`` (quarter
    notes a minute) and ``tick_time`` (the fitted time of the last tick). Deterministic:
    it keeps no clock of its own."""

    def __init__(self, *, window: int = 96, min_ticks: int = 12, jump_run: int = 4, jump_sigmas: float = 4.0,
                 floor_s: float = 0.002, gap_s: float = 1.0) -> None:
        self.window = window
        self.min_ticks = min_ticks
        self.jump_run = jump_run
        self.jump_sigmas = jump_sigmas
        self.floor_s = floor_s
        self.gap_s = gap_s  # silence after which the clock counts as stopped and restarted, not stalled
        self.jumps = 0
        self.restarts = 0
        self.lost = 0  # ticks that never arrived, found from the line
        self._count = 0  # ticks seen, timed or not: the x axis of the line
        self._points: deque[tuple[int, float]] = deque(maxlen=window)
        self._aside: list[tuple[int, float, float]] = []  # (n, t, residual) held off the line
        self._fit: tuple[float, float, float] | None = None
        self._last_at: float | None = None
        self._after_jump = False
        self._last_period: float | None = None

    # --- reading --------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Enough ticks on the line to trust its slope."""
        return self._fit is not None and (len(self._points) >= self.min_ticks or self._after_jump)

    @property
    def period_s(self) -> float | None:
        """The line's period; until a new line is ready, the last one's (a clock that
        paused and came back most likely plays on at its tempo)."""
        if self.ready and self._fit is not None and self._fit[1] > 0:
            return self._fit[1]
        return self._last_period

    @property
    def bpm(self) -> float | None:
        period = self.period_s
        return 60.0 / (TICKS_PER_QUARTER * period) if period else None

    @property
    def tick_time(self) -> float | None:
        """Where the line puts the last tick (its jitter taken out); until a line is ready,
        its arrival."""
        if not self.ready or self._fit is None:
            return self._last_at
        a, b, _ = self._fit
        return a + b * (self._count - 1)

    # --- feeding --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the line (the clock stopped, the port came back): the next ticks start a new one."""
        self._last_period = self.period_s
        self._points.clear()
        self._aside.clear()
        self._fit = None
        self._last_at = None
        self._after_jump = False
        self.restarts += 1

    def add(self, at: float, *, timed: bool = True) -> None:
        """One tick at ``at`` seconds. ``timed=False``: a tick whose arrival time is not its
        own (released late in a burst): counted, kept off the line."""
        n = self._count
        self._count += 1
        if not timed:
            return
        if self._last_at is not None and at - self._last_at > self.gap_s:
            self.reset()
        self._last_at = at
        if self._fit is None or len(self._points) < self.min_ticks:
            self._take(n, at)  # too few ticks for the line's scatter to mean anything yet
            return
        a, b, rms = self._fit
        residual = at - (a + b * n)
        threshold = max(self.floor_s, self.jump_sigmas * rms)
        if abs(residual) <= threshold:
            self._aside.clear()  # the line holds: what was held aside was a late or early tick
            self._take(n, at)
            return
        if self._aside and (self._aside[-1][2] > 0) != (residual > 0):
            self._aside.clear()
        self._aside.append((n, at, residual))
        if len(self._aside) < self.jump_run:
            return
        drift = abs(self._aside[-1][2]) - abs(self._aside[0][2])
        if drift > threshold:  # moving away from the line tick by tick: a new tempo
            _, slope, _ = _line([(m, t) for m, t, _ in self._aside])
            if 0.5 * b <= slope <= 2.0 * b:
                self._jump()
        elif drift >= -threshold:  # a steady offset
            offset = sum(r for _, _, r in self._aside) / len(self._aside)
            missed = self._whole_periods(offset, a, b, threshold)
            self.lost += missed  # whole periods late: ticks lost on the way
            self._count += missed
            for m, t, _ in self._aside:
                self._take(m + missed, t)
            self._aside.clear()
        else:  # closing in on the line: a burst released after a stall; its times are not the ticks'
            del self._aside[: -self.jump_run]

    def _whole_periods(self, offset: float, a: float, b: float, threshold: float) -> int:
        """How many ticks a steady ``offset`` behind the line says were lost: whole periods,
        on average off by them within the scatter of the ticks on the line (the JACK
        cycle's rounding is in that scatter, not only the jitter: real stamps come a cycle
        at a time, so their scatter is far wider than a rounding-free line's rms would
        allow); none where that scatter is too wide to tell one period from the next."""
        missed = round(offset / b)
        if missed < 1:
            return 0
        scatter = max(threshold, max(abs(t - a - b * m) for m, t in self._points))
        if scatter >= b / 2:
            return 0  # a cycle as long as half a tick: a lost tick and rounding look alike
        if abs(offset - missed * b) > scatter:
            return 0  # not whole periods: a coarse period's rounding; the line was too sure
        return missed

    def _take(self, n: int, at: float) -> None:
        self._points.append((n, at))
        if len(self._points) >= 2:
            self._fit = _line(list(self._points))
            if len(self._points) >= self.min_ticks:
                self._after_jump = False

    def _jump(self) -> None:
        self.jumps += 1
        self._points.clear()
        self._points.extend((m, t) for m, t, _ in self._aside)
        self._aside.clear()
        self._fit = _line(list(self._points))
        self._after_jump = True
