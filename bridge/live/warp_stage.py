"""The beat warp as the one stream's path stage: which grid it lays the beats on, and what it holds.

``TargetLoop.place`` (``AudioPath.stage``, engine thread) hands each generated block here.
While the tempo lock is on, the beats go onto the clock's grid (none with the transport
stopped); while a tempo target is on instead, onto a grid of the stage's own at the
target's setpoint: it starts, on a beat, where the warp starts, and a new setpoint changes
its tempo from the next sample placed, its beat going on. Without either, what the warp
still holds plays first, unwarped, and the stage passes blocks through untouched.

Engine thread only. Torch-free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..clock.grid import Grid, exact_bpm
from .beat_warp import BeatWarp, Pulses

if TYPE_CHECKING:
    from ..clock.clock import ClockSnapshot


class WarpStage:
    """The warp, whether it was asked for, and a tempo target's own grid."""

    def __init__(self, model_rate: int, ring_ratio: float, asked: bool) -> None:
        self.warp = BeatWarp(model_rate, ring_ratio)
        self.asked = asked
        self.ring_rate = round(model_rate * ring_ratio)
        self.target_grid: Grid | None = None  # a tempo target's grid (ring samples), from where it first warped
        # Whether the last block was warped, and whether a gap (a stop) came before one since
        # ``take_gap``: a warped block does not land where the one before it ended, so the
        # sensors (``TargetLoop._hear``) learn of a gap from here, not from the ring samples.
        self.warped = False
        self._gap = False

    def pulses(self, at: int, clock: ClockSnapshot | None, *, lock: bool,
               setpoint: float | None) -> tuple[Pulses, float] | None:
        """The pulse lines to lay the beats on and their tempo (BPM) now: the clock's with the
        ``lock`` (None with the transport stopped), else a grid at the tempo target's ``setpoint``."""
        if lock:
            if clock is None or not clock.playing or clock.grid is None:
                return None
            return Pulses.of_grid(clock.grid), float(clock.bpm)
        if setpoint is None:
            return None
        grid = self.target_grid
        if grid is None:
            grid = Grid.start(self.ring_rate, setpoint, sample=at)
        elif grid.last.bpm != exact_bpm(setpoint):
            grid = grid.with_tempo(max(at, int(grid.last.sample)), setpoint)
        self.target_grid = grid
        return Pulses.of_grid(grid), setpoint

    def place(self, audio: np.ndarray, at: int, pulses: tuple[Pulses, float] | None) -> tuple[np.ndarray, int]:
        """A block ([channels, n], model rate) as it is to be played, and how many samples
        before it the warp still holds: laid on ``pulses``, or (None) passed through after
        what the warp held."""
        self.warped = pulses is not None
        if pulses is not None:
            # After a gap it holds nothing: the block's first sample is next.
            self._gap = self.warp.follows(at) or self._gap
            held = self.warp.held_samples
            return self.warp.process(audio, at, pulses[0], pulses[1]), held
        self.target_grid = None
        if self.warp.held_samples or self.warp.slices:
            rest = self.rest()
            return (np.concatenate([rest, audio], axis=1) if rest.shape[-1] else audio), rest.shape[-1]
        return audio, 0

    def take_gap(self) -> bool:
        """Whether a gap came before a warped block since the last call."""
        gap, self._gap = self._gap, False
        return gap

    def rest(self) -> np.ndarray:
        """What the warp holds, as it is, and the warp reset (its end, or the set's)."""
        rest = self.warp.flush()
        self.warp.reset()
        return rest

    def reserve_s(self, grid_bpm: float) -> float:
        """Audio (seconds) the ring should hold beyond its goal while warping onto a grid at
        ``grid_bpm``: a slice cut short waits at its place's end for the next onset to be
        generated (half an eighth of the slower of the model's and the grid's tempo: what a
        slice cut to MIN_STRETCH waits), and the warp's margin."""
        model = self.warp.model_bpm
        slowest = min(grid_bpm, model) if math.isfinite(model) else grid_bpm
        return 0.5 * 30.0 / max(slowest, 40.0) + self.warp.margin_s


__all__ = ["WarpStage"]
