"""The timeline of a ``StemStream``: ``Performance`` with one set of knob targets per stem.

A change carries the row it is for (``Change.stream``; None: every row). Alphas are
smoothed per row by the same one-pole filter, a prompt or seed change touches its row
only, a sampling setting for one row sets that row's (``StemStream.row_settings``; for
no row: that setting on every row, each keeping its others), and a rollback puts back
every row's played values from before the step it returns to, so live play and a replay
of the log give the same tokens (the contract of ``timeline.Performance``). ``mute`` and
``solo`` change no token: they are checked here and left to the live mix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace

from steering_core.errors import UserError
from steering_core.steer.steerer import Steerer
from steering_core.stream.settings import SETTING_BY_NAME
from steering_core.stream.stem_stream import StemStream
from steering_core.stream.timeline import AUDIO_ONLY_KINDS, Change, Performance


class StemPerformance(Performance):
    """A ``Performance`` over a ``StemStream``: knob targets per row (see the module doc)."""

    def __init__(self, stream: StemStream, steerer: Steerer | None = None, *, smoothing_ms: float = 30.0,
                 history_steps: int = 512) -> None:
        super().__init__(stream, steerer, smoothing_ms=smoothing_ms, history_steps=history_steps)
        self.stems = stream
        self.row_targets: list[dict[str, float]] = [self.row_current(i) for i in range(stream.batch)]
        self._row_history: deque[tuple[int, list[dict[str, float]]]] = deque(maxlen=history_steps)

    def row_current(self, row: int) -> dict[str, float]:
        """Row ``row``'s knobs as they play now (smoothed)."""
        return self.steerer.alphas(row) if self.steerer is not None else {}

    def earliest_step(self) -> int:
        oldest = self._row_history[0][0] if self._row_history else self.next_step
        return max(self.last_change_step, oldest)

    def step(self) -> None:
        self._check_owner("step")
        played = [self.row_current(i) for i in range(self.stems.batch)]
        self._row_history.append((self.next_step, played))
        a = self.smoothing
        for row, targets in enumerate(self.row_targets):
            moved = {}
            for name, target in targets.items():
                before = played[row][name]
                value = target if abs(target - before) < 1e-6 else before + a * (target - before)
                if value != before:
                    moved[name] = value
            self._play_row(row, moved)
        self.stream.step()

    def _rollback(self, step: int) -> None:
        actual = self.stream.rollback(step)
        while self._row_history and self._row_history[-1][0] > actual:
            self._row_history.pop()
        if self._row_history and self._row_history[-1][0] == actual:
            played = self._row_history.pop()[1]
            for row, values in enumerate(played):
                now = self.row_current(row)
                self._play_row(row, {n: v for n, v in values.items() if now.get(n) != v})

    def _play_row(self, row: int, values: Mapping[str, float]) -> None:
        if self._knobs is not None:
            for name, value in values.items():
                self._knobs.set_alpha(name, value, stream=row)

    def _check_stream(self, change: Change) -> None:
        if change.stream is not None and not 0 <= change.stream < self.stems.batch:
            raise UserError(f"no stem at row {change.stream} (the set has {self.stems.batch})")
        if change.kind in AUDIO_ONLY_KINDS and change.stream is None:
            raise UserError(f"a {change.kind} change names its stem")

    def _rows(self, change: Change) -> Sequence[int]:
        return range(self.stems.batch) if change.stream is None else (change.stream,)

    def _target(self, concept: str | None, row: int | None) -> float | None:
        return None if concept is None or row is None else self.row_targets[row].get(concept)

    def _target_rows(self, change: Change) -> Sequence[int | None]:
        return self._rows(change)

    def _apply(self, change: Change) -> None:
        kind, value = change.kind, change.value
        if kind in AUDIO_ONLY_KINDS:
            return
        if kind == "alpha":
            for row in self._rows(change):
                self.row_targets[row][change.concept] = float(value)  # type: ignore[arg-type,index]
        elif kind == "enabled":
            if self._knobs is not None and change.concept is not None:
                for row in self._rows(change):
                    self._knobs.set_enabled(change.concept, bool(value), stream=row)
        elif kind == "prompt" and change.stream is not None:
            self.stems.set_row_prompt(change.stream, str(value))
        elif kind == "seed" and change.stream is not None:
            self.stems.row_generators.seed_row(change.stream, int(value))  # type: ignore[arg-type]
        elif kind in SETTING_BY_NAME:  # each row's own setting; None: that setting on every row
            field = SETTING_BY_NAME[kind].field
            for row in self._rows(change):
                self.stems.set_row_settings(row, replace(self.stems.row_settings[row], **{field: value}))  # type: ignore[arg-type]
        elif kind == "panic":
            for row, targets in enumerate(self.row_targets):
                self.row_targets[row] = dict.fromkeys(targets, 0.0)
                self._play_row(row, self.row_targets[row])
        else:  # every row alike: a shared prompt or seed
            super()._apply(change)


__all__ = ["StemPerformance"]
