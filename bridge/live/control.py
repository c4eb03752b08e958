"""Control state: what the performer asked for, and the queue of changes to the engine.

Control threads (OSC, MIDI, scenes) call ``submit`` with already-validated changes.
``submit`` updates the *targets* view at once (so ``/status`` and controller
feedback follow the knob immediately), tells listeners, and queues a
``ControlEvent`` for the engine, which drains the queue once per loop and decides at
which step each event takes effect. Nothing here touches the model.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from steering_core.errors import UserError
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.timeline import Change

#: A listener sees every submitted event (controller feedback, MIDI pickup).
Listener = Callable[["ControlEvent"], None]
MAX_ERROR_CHARS = 300


class ControlError(UserError):
    """A control message that cannot be applied; it changed nothing."""


@dataclass(frozen=True)
class ConceptKnob:
    """A loaded concept as a knob: its name and the alpha range the knob spans."""

    name: str
    alpha_range: tuple[float, float]

    def alpha_from_knob(self, knob: float) -> float:
        lo, hi = self.alpha_range
        return lo + knob * (hi - lo)

    def knob_from_alpha(self, alpha: float) -> float:
        lo, hi = self.alpha_range
        return (alpha - lo) / (hi - lo)


@dataclass
class ControlEvent:
    changes: tuple[Change, ...]
    source: str  # "osc 127.0.0.1:50123", "midi", "scene intro", ...
    label: str  # what was touched, e.g. "/steer/tempo/knob"
    arrived: float = field(default_factory=time.monotonic)
    transport: str | None = None  # "play" | "stop"
    step: int | None = None  # set by the engine: the step it takes effect at


class ControlState:
    """What the performer asked for, plus the event queue to the engine. Thread-safe.

    This is the one owner of the *asked-for* state: each knob's target, each concept's
    switch, the prompt and the sampling settings, as the last message set them, which
    is what ``/status``, controller feedback, MIDI pickup and scenes show. ``submit`` is
    the one way to change it (the views below are read-only). What the music is playing
    at this moment is the steerer's, on the engine thread, a few smoothed steps behind."""

    def __init__(self, concepts: Sequence[ConceptKnob], prompt: str, settings: SamplingSettings,
                 *, vocab_size: int = 2048) -> None:
        self.concepts: dict[str, ConceptKnob] = {c.name: c for c in concepts}
        self._targets: dict[str, float] = {c.name: 0.0 for c in concepts}
        self._enabled: dict[str, bool] = {c.name: True for c in concepts}
        self.prompt = prompt
        self.settings = SamplingSettings(**vars(settings))
        self.seed: int | None = None
        self.playing = True
        self.vocab_size = vocab_size
        self.errors = 0
        self.last_error = ""
        self._queue: list[ControlEvent] = []
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.wake = threading.Event()  # set on every submit, so the engine reacts at once

    @property
    def targets(self) -> Mapping[str, float]:
        """Each knob's target alpha, as asked (read-only: change it with ``submit``)."""
        return MappingProxyType(self._targets)

    @property
    def enabled(self) -> Mapping[str, bool]:
        """Each concept's on/off switch, as asked (read-only)."""
        return MappingProxyType(self._enabled)

    # --- validation, shared by every control surface ---------------------------
    def concept(self, name: str) -> ConceptKnob:
        knob = self.concepts.get(name)
        if knob is None:
            known = ", ".join(self.concepts) or "none loaded"
            raise ControlError(f"unknown concept {name!r} (loaded: {known})")
        return knob

    def alpha_change(self, name: str, alpha: float) -> Change:
        knob = self.concept(name)
        lo, hi = knob.alpha_range
        _finite(alpha, f"alpha for {name}")
        if not lo <= alpha <= hi:
            raise ControlError(f"alpha {alpha:g} is outside {name}'s range {lo:g}..{hi:g}")
        return Change("alpha", float(alpha), name)

    def knob_change(self, name: str, knob: float) -> Change:
        _finite(knob, f"knob for {name}")
        if not 0.0 <= knob <= 1.0:
            raise ControlError(f"knob {knob:g} for {name} is outside 0..1")
        return Change("alpha", self.concept(name).alpha_from_knob(knob), name)

    def enabled_change(self, name: str, on: bool) -> Change:
        self.concept(name)
        return Change("enabled", bool(on), name)

    def setting_change(self, kind: str, value: float | int) -> Change:
        _finite(value, kind)
        if kind == "top_k":
            if not (isinstance(value, int) and 0 <= value <= self.vocab_size):
                raise ControlError(f"top_k must be a whole number in 0..{self.vocab_size}, got {value!r}")
        elif kind == "seed":
            if not (isinstance(value, int) and 0 <= value < 2**63):
                raise ControlError(f"seed must be a whole number >= 0, got {value!r}")
            return Change("seed", int(value))
        trial = SamplingSettings(**{**vars(self.settings), "guidance_scale" if kind == "guidance" else kind: value})
        try:
            trial.validate()
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return Change(kind, value)  # type: ignore[arg-type]

    # --- the write side (control threads) ---------------------------------------
    def submit(self, changes: Sequence[Change], source: str, label: str, *, transport: str | None = None,
               arrived: float | None = None) -> ControlEvent:
        event = ControlEvent(tuple(changes), source, label, arrived or time.monotonic(), transport)
        with self._lock:
            for change in changes:
                self._update_view(change)
            if transport is not None:
                self.playing = transport == "play"
            self._queue.append(event)
            listeners = list(self._listeners)
        self.wake.set()
        for listener in listeners:
            listener(event)
        return event

    def reject(self, reason: str, count: int = 1) -> None:
        """Count ``count`` refused messages; ``reason`` is the last one's."""
        with self._lock:
            self.errors += count
            # Cut long reasons: the text goes into /status, which must stay one datagram.
            self.last_error = reason if len(reason) <= MAX_ERROR_CHARS else reason[:MAX_ERROR_CHARS] + "..."

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # --- the read side (engine, status) ------------------------------------------
    def drain(self) -> list[ControlEvent]:
        with self._lock:
            events, self._queue = self._queue, []
        return events

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "targets": dict(self._targets),
                "enabled": dict(self._enabled),
                "knobs": {n: self.concepts[n].knob_from_alpha(a) for n, a in self._targets.items()},
                "prompt": self.prompt,
                "settings": vars(self.settings).copy(),
                "playing": self.playing,
                "errors": self.errors,
                "last_error": self.last_error,
            }

    def scene_view(self) -> dict[str, object]:
        """What a scene stores: every knob target, the on/off switches and the prompt."""
        with self._lock:
            return {"targets": dict(self._targets), "enabled": dict(self._enabled), "prompt": self.prompt}

    def _update_view(self, change: Change) -> None:
        if change.kind == "alpha":
            self._targets[change.concept] = float(change.value)  # type: ignore[arg-type,index]
        elif change.kind == "enabled":
            self._enabled[change.concept] = bool(change.value)  # type: ignore[index]
        elif change.kind == "prompt":
            self.prompt = str(change.value)
        elif change.kind == "panic":
            self._targets.update(dict.fromkeys(self._targets, 0.0))
        elif change.kind == "seed":
            self.seed = int(change.value)  # type: ignore[arg-type]
        else:
            key = "guidance_scale" if change.kind == "guidance" else change.kind
            setattr(self.settings, key, change.value)


def _finite(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ControlError(f"{what} must be finite, got {value}")


def changes_from_view(control: ControlState, view: Mapping[str, object]) -> list[Change]:
    """Changes that bring the control state to a stored view (a scene), skipping
    concepts that are not loaded and a prompt that is already playing."""
    changes: list[Change] = []
    targets = view.get("targets", {})
    enabled = view.get("enabled", {})
    if isinstance(targets, Mapping):
        for name, alpha in targets.items():
            if name in control.concepts:
                lo, hi = control.concepts[name].alpha_range
                changes.append(control.alpha_change(name, min(max(float(alpha), lo), hi)))
    if isinstance(enabled, Mapping):
        changes.extend(control.enabled_change(n, bool(on)) for n, on in enabled.items() if n in control.concepts)
    prompt = view.get("prompt")
    if isinstance(prompt, str) and prompt and prompt != control.prompt:
        changes.append(Change("prompt", prompt))
    return changes
