"""A performance: the stream plus the knobs, on one timeline of steps.

Every control change takes effect at a *step* (step ``s`` produces codebook-0 frame
``s``). Knob targets are smoothed per step by a one-pole filter, so a jump never lands
as a step in the music. ``Performance`` guarantees one thing that live play and replay
both rely on:

    the same changes at the same steps give the same tokens,

whether they arrive live (and the engine rolls back steps it had generated ahead) or
are replayed offline from a log. Rollback therefore restores, with the stream's cache
and RNG, the smoothing state from before the step it returns to. Changes can only
take effect at or after the step of the previous change, so a log read in order is
the timeline.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from steering_core.errors import UnknownConceptError, UserError
from steering_core.steer.steerer import KnobDriver, Steerer
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.settings import SETTING_BY_NAME, SamplingSettings

#: What a ``Change`` may change: a concept's alpha or on/off, the prompt, each sampling
#: setting by its control name (``settings.SETTINGS``), the seed, or everything at once (panic);
#: and a stem's mute or solo, which change no token (the live mix applies them) but belong
#: on the timeline so the log and its replay hear what was played.
ChangeKind = str
AUDIO_ONLY_KINDS: tuple[str, ...] = ("mute", "solo")
CHANGE_KINDS: tuple[str, ...] = ("alpha", "enabled", "prompt", *SETTING_BY_NAME, "seed", "panic", *AUDIO_ONLY_KINDS)


@dataclass(frozen=True)
class Change:
    """One control change, already validated: ``alpha`` and ``enabled`` name a concept;
    ``stream`` is the row of a batch (a stem) it is for, None for every row."""

    kind: ChangeKind
    value: float | int | str | bool | None = None
    concept: str | None = None
    stream: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHANGE_KINDS:
            raise ValueError(f"unknown change kind {self.kind!r}; one of {', '.join(CHANGE_KINDS)}")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.concept is not None:
            out["concept"] = self.concept
        if self.value is not None:
            out["value"] = self.value
        if self.stream is not None:
            out["stream"] = self.stream
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Change:
        kind = raw.get("kind")
        if kind not in CHANGE_KINDS:
            raise UserError(f"unknown change kind {kind!r}")
        concept = raw.get("concept")
        value = raw.get("value")
        if concept is not None and not isinstance(concept, str):
            raise UserError(f"change concept must be a string, got {concept!r}")
        if value is not None and not isinstance(value, float | int | str | bool):
            raise UserError(f"change value must be a number, bool or string, got {value!r}")
        stream = raw.get("stream")
        if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int) or stream < 0):
            raise UserError(f"change stream must be a whole number >= 0, got {stream!r}")
        return cls(kind, value, concept, stream)


class Performance:
    """Drive a ``MusicStream`` step by step, with smoothed knobs and rollback-safe changes.

    Who owns what. The performance owns the *targets*: where each knob is headed, on
    the timeline of steps (set only by ``apply``). The steerer owns the *played* value
    of each knob (``current`` reads it): ``step`` moves it one smoothing step towards
    its target, and a rollback puts back the values from before the step it returns
    to. Change knobs with ``apply``: once the performance runs it is the steerer's only
    knob writer (``Steerer.drive_knobs``), and ``Steerer.set_alpha``/``set_enabled`` from
    anywhere else raise, since the log and the replay would never see the change.

    Thread contract: one thread drives a performance (``apply``, ``step``,
    ``run_to_frames``); the first one to call them owns it (and takes the steerer's
    knobs), and a call from any other thread raises ``RuntimeError``. ``current`` and
    the read-only properties are safe from any thread."""

    def __init__(self, stream: MusicStream, steerer: Steerer | None = None, *, smoothing_ms: float = 30.0,
                 history_steps: int = 512) -> None:
        if not (math.isfinite(smoothing_ms) and smoothing_ms >= 0):
            raise UserError(f"smoothing_ms must be >= 0, got {smoothing_ms}")
        self.stream = stream
        self.steerer = steerer
        frame_ms = 1000.0 / stream.handle.frame_rate
        # One-pole smoothing: each step closes this fraction of the gap to the target.
        self.smoothing = 1.0 if smoothing_ms == 0 else 1.0 - math.exp(-frame_ms / smoothing_ms)
        self.targets: dict[str, float] = self.current
        self.last_change_step = 0
        # The played values before each recent step, for rollback.
        self._history: deque[tuple[int, dict[str, float]]] = deque(maxlen=history_steps)
        self._owner: int | None = None
        #: The steerer's one knob writer, taken by the first call that drives the performance.
        self._knobs: KnobDriver | None = None

    @property
    def current(self) -> dict[str, float]:
        """Each knob as it plays now (smoothed), read from the steerer that holds it."""
        return self.steerer.alphas() if self.steerer is not None else {}

    def row_current(self, row: int) -> dict[str, float]:
        """Row ``row``'s knobs as they play (one stream: every row plays ``current``)."""
        return self.current

    @property
    def next_step(self) -> int:
        return self.stream.next_frame

    @property
    def prompt(self) -> str:
        return self.stream.prompts[0]

    @property
    def settings(self) -> SamplingSettings:
        return self.stream.settings

    def earliest_step(self) -> int:
        """The earliest step a change may still take effect at."""
        oldest = self._history[0][0] if self._history else self.next_step
        return max(self.last_change_step, oldest)

    def apply(self, changes: Sequence[Change], at_step: int | None = None) -> int:
        """Apply ``changes`` from step ``at_step`` (rolling back what was generated from
        there on) or, by default, from the next step. Returns the step they take effect at.
        A change that fails validation raises before anything is touched."""
        self._check_owner("apply")
        self._check_batch(changes)
        if self.restates(changes):  # moves nothing: nothing to generate again, nothing a rollback could undo
            return self.next_step
        if at_step is not None and at_step < self.next_step:
            self._rollback(max(at_step, self.earliest_step()))
        step = self.next_step
        for change in changes:
            self._apply(change)
        if changes:
            self.last_change_step = step
        return step

    def restates(self, changes: Sequence[Change]) -> bool:
        """Whether every change sets a knob to the target it already has (a fader resent at
        its value, a flood of one value): applying them moves nothing."""
        return bool(changes) and all(
            c.kind == "alpha" and all(self._target(c.concept, row) == c.value for row in self._target_rows(c))
            for c in changes)

    def _target(self, concept: str | None, row: int | None) -> float | None:
        return self.targets.get(concept) if concept is not None else None

    def _target_rows(self, change: Change) -> Sequence[int | None]:
        return (None,)

    def step(self) -> None:
        """One decode step under the current (smoothed) knobs."""
        self._check_owner("step")
        played = self.current
        self._history.append((self.next_step, played))
        a = self.smoothing
        moved = {}
        for name, target in self.targets.items():
            before = played[name]
            value = target if abs(target - before) < 1e-6 else before + a * (target - before)
            if value != before:
                moved[name] = value
        self._play(moved)  # only the knobs that move: a fill_ per concept per step is a GPU op
        self.stream.step()

    def run_to_frames(self, frames: int, schedule: Iterable[tuple[int, Sequence[Change]]] = ()) -> None:
        """Step until ``frames`` frames are complete, applying each scheduled batch of
        changes at its step (the offline replay of a performance log)."""
        self._check_owner("run_to_frames")
        pending = deque(sorted(schedule, key=lambda item: item[0]))
        while self.stream.frames_complete < frames:
            while pending and pending[0][0] <= self.next_step:
                _, batch = pending.popleft()
                self.apply(batch)
            self.step()

    # --- internals ----------------------------------------------------------------
    def _rollback(self, step: int) -> None:
        actual = self.stream.rollback(step)
        while self._history and self._history[-1][0] > actual:
            self._history.pop()
        if self._history and self._history[-1][0] == actual:
            played = self._history.pop()[1]
            now = self.current
            self._play({name: value for name, value in played.items() if now.get(name) != value})

    def _play(self, values: Mapping[str, float]) -> None:
        if self._knobs is not None:
            for name, value in values.items():
                self._knobs.set_alpha(name, value)

    def _check_owner(self, call: str) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
            if self.steerer is not None:
                self._knobs = self.steerer.drive_knobs(self, "a Performance")
        elif self._owner != me:
            raise RuntimeError(f"Performance.{call} from thread {threading.current_thread().name!r}: a performance "
                               "is driven by one thread (the engine's); send changes through its control queue")

    def _check_batch(self, changes: Sequence[Change]) -> None:
        """Everything ``_apply`` could refuse, for the whole batch, before any of it is
        applied: a batch is all or nothing. The sampling settings are validated as the
        batch would leave them."""
        settings = vars(self.stream.settings).copy()
        for change in changes:
            kind, value = change.kind, change.value
            if kind not in CHANGE_KINDS:
                raise UserError(f"unknown change kind {kind!r}")
            self._check_stream(change)
            if kind in ("alpha", "enabled") and change.concept not in self.targets:
                known = ", ".join(self.targets) or "none loaded"
                raise UnknownConceptError(f"unknown concept {change.concept!r} (loaded: {known})")
            if kind == "alpha" and not (isinstance(value, int | float) and not isinstance(value, bool)
                                        and math.isfinite(value)):
                raise UserError(f"alpha for {change.concept} must be a finite number, got {value!r}")
            elif kind == "prompt" and not (isinstance(value, str) and value.strip()):
                raise UserError(f"prompt must be a non-empty string, got {value!r}")
            elif kind == "seed" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise UserError(f"seed must be a whole number >= 0, got {value!r}")
            elif kind in SETTING_BY_NAME:
                settings[SETTING_BY_NAME[kind].field] = value
        SamplingSettings(**settings).validate()

    def _check_stream(self, change: Change) -> None:
        """A change for one row: a plain performance plays every row alike, so it has none."""
        if change.stream is not None or change.kind in AUDIO_ONLY_KINDS:
            raise UserError(f"a {change.kind} change for one stem needs a stem performance")

    def _apply(self, change: Change) -> None:
        kind, value = change.kind, change.value
        if kind == "alpha":
            self.targets[change.concept] = float(value)  # type: ignore[arg-type,index]
        elif kind == "enabled":
            if self._knobs is not None and change.concept is not None:
                self._knobs.set_enabled(change.concept, bool(value))
        elif kind == "prompt":
            self.stream.set_prompt([str(value)] * self.stream.batch)
        elif kind == "seed":
            self.stream.generator.manual_seed(int(value))  # type: ignore[arg-type]
        elif kind == "panic":  # silence the steering at once, no smoothing
            self.targets = dict.fromkeys(self.targets, 0.0)
            self._play(self.targets)
        else:  # sampling settings
            settings = SamplingSettings(**{**vars(self.stream.settings), SETTING_BY_NAME[kind].field: value})
            settings.validate()
            self.stream.settings = settings
