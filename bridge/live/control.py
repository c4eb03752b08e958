"""Control state: what the performer asked for, and the queue of changes to the engine.

Control threads (OSC, MIDI, scenes) call ``submit`` with already-validated changes
(``change_for`` makes one from a target of ``targets.ControlTable`` and its parsed
arguments). ``submit`` updates the *asked* view at once (so ``/status`` and
controller feedback follow the knob immediately), tells listeners, and queues a
``ControlEvent`` for the engine, which drains the queue once per loop and decides at
which step each event takes effect. Knob moves for one concept that arrive between two
drains are coalesced: the newest replaces the one still queued (they would land at the
same step, and only the last would be heard), so a flood of knob messages costs the
engine one change per concept per loop. The engine logs what it applies, so the
performance log (and a replay of it) holds exactly what was played. Transport is not held here: it is the engine's
(``Engine.playing``), and reaches it as an event like any other. Nothing here
touches the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from steering_core.steer.feedforward import FeedForward
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.timeline import Change

from .stem_table import StemTable
from .target_loop import TargetAsk
from .target_units import UNITS, knob_span
from .targets import SETTING_BY_NAME, Args, Asked, ControlError, ControlTable, Target

if TYPE_CHECKING:
    from steering_core.steer.vectors import SteeringVector

log = logging.getLogger("steerbridge.control")

#: A listener sees every submitted event (controller feedback, MIDI pickup).
Listener = Callable[["ControlEvent"], None]
MAX_ERROR_CHARS = 300

__all__ = ["ConceptKnob", "ControlError", "ControlEvent", "ControlState", "change_for"]


@dataclass(frozen=True)
class ConceptKnob:
    """A loaded concept as a knob: its name and the alpha range the knob spans."""

    name: str
    alpha_range: tuple[float, float]
    #: What its target knob's 0..1 spans, in the unit (``target_units.knob_span``); None:
    #: the unit's fixed span.
    target_span: tuple[float, float] | None = None
    #: Its calibration read backwards (measure -> alpha), the target loop's feed-forward; None: none.
    feedforward: FeedForward | None = None
    #: Whether its vector carries a probe (``steer/probe.py``): it then takes a probe target.
    probe: bool = False

    @classmethod
    def of(cls, vector: SteeringVector) -> ConceptKnob:
        """A vector's knob; a concept with a target knob takes its span from the calibration."""
        if vector.concept not in UNITS:
            return cls(vector.concept, vector.alpha_range, probe=vector.probe is not None)
        span, why = knob_span(vector.concept, vector.calibration, vector.alpha_range)
        if why is not None:
            log.info("%s: target knob spans the fixed %g..%g %s (%s)", vector.concept, *span,
                     UNITS[vector.concept].unit, why)
        table = FeedForward.of(vector.calibration, UNITS[vector.concept].measure, vector.alpha_range)
        return cls(vector.concept, vector.alpha_range, span, table, vector.probe is not None)

    def alpha_from_knob(self, knob: float) -> float:
        lo, hi = self.alpha_range
        return lo + knob * (hi - lo)

    def knob_from_alpha(self, alpha: float) -> float:
        lo, hi = self.alpha_range
        return (alpha - lo) / (hi - lo)


@dataclass
class StemView:
    """One stem's asked state (under ``ControlState``'s lock): its knobs, switches, prompt,
    mute and solo. ``knobs`` gives each concept's range on this stem."""

    name: str
    knobs: dict[str, ConceptKnob]
    prompt: str
    targets: dict[str, float] = field(default_factory=dict)
    enabled: dict[str, bool] = field(default_factory=dict)
    mute: bool = False
    solo: bool = False
    #: Its own sampling settings, by ``SamplingSettings`` field (empty: the set's, filled by ``ControlState``).
    settings: dict[str, Any] = field(default_factory=dict)
    #: False: a spare row no stem holds yet (``serve --stem-spares``; ``stem_live``).
    active: bool = True

    def __post_init__(self) -> None:
        self.targets = self.targets or dict.fromkeys(self.knobs, 0.0)
        self.enabled = self.enabled or dict.fromkeys(self.knobs, True)

    def update(self, change: Change) -> None:
        if change.kind == "alpha" and change.concept in self.targets:
            self.targets[change.concept] = float(change.value)  # type: ignore[arg-type]
        elif change.kind == "enabled" and change.concept in self.enabled:
            self.enabled[change.concept] = bool(change.value)
        elif change.kind == "prompt":
            self.prompt = str(change.value)
        elif change.kind == "panic":
            self.targets.update(dict.fromkeys(self.targets, 0.0))
        elif change.kind in ("mute", "solo"):
            setattr(self, change.kind, bool(change.value))
        elif change.kind in SETTING_BY_NAME:
            self.settings[SETTING_BY_NAME[change.kind].field] = change.value

    def view(self) -> dict[str, Any]:
        return {"targets": dict(self.targets), "enabled": dict(self.enabled), "prompt": self.prompt,
                "knobs": {n: self.knobs[n].knob_from_alpha(a) for n, a in self.targets.items()},
                "mute": self.mute, "solo": self.solo, "settings": dict(self.settings)}


@dataclass
class ControlEvent:
    changes: tuple[Change, ...]
    source: str  # "osc 127.0.0.1:50123", "midi", "scene intro", ...
    label: str  # what was touched, e.g. "/steer/tempo/knob"
    arrived: float = field(default_factory=time.monotonic)
    transport: str | None = None  # "play" | "stop"
    step: int | None = None  # set by the engine: the step it takes effect at
    #: When it lands: None (at once), "default" (serve --quantize) or off|beat|bar|<n>bar.
    quantize: str | None = None
    #: Set by the engine when a clock runs: where it landed (ring sample, bar, beat).
    landed: dict[str, Any] | None = None
    #: Set by the engine once its first frame's audio is in the ring: the ring sample it starts at.
    placed: int | None = None
    #: Target knobs' setpoints, offs, or the tempo lock (``target_loop.TargetAsk``), one per target named.
    target: tuple[TargetAsk, ...] | None = None
    #: The target loop's state when it set this event's alpha (for the performance log).
    info: dict[str, Any] | None = None


def change_for(target: Target, args: Args) -> Change:
    """The change a value target's parsed arguments ask for (``alpha``, ``knob``, ``on``,
    ``prompt``, ``setting``, ``seed``, ``panic``)."""
    row = target.stream  # a stem's own row: the change is for its stream alone
    if target.kind == "alpha":
        return Change("alpha", float(args[0]), target.concept, row)
    if target.kind == "knob" and target.alpha_range is not None:
        lo, hi = target.alpha_range
        return Change("alpha", lo + float(args[0]) * (hi - lo), target.concept, row)
    if target.kind == "on":
        return Change("enabled", bool(args[0]), target.concept, row)
    if target.kind == "prompt":
        return Change("prompt", str(args[0]), stream=row)
    if target.kind in ("mute", "solo"):
        return Change(target.kind, bool(args[0]), stream=row)
    if target.setting is not None:
        return Change(target.setting.name, args[0], stream=row)
    if target.kind == "seed":
        return Change("seed", int(args[0]), stream=row)
    if target.kind == "panic":
        return Change("panic")
    raise ValueError(f"{target.address} asks for no change")  # a bug: only value targets come here


class ControlState:
    """What the performer asked for, plus the event queue to the engine. Thread-safe.

    This is the one owner of the *asked* state: each knob's target, each concept's
    switch, the prompt and the sampling settings, as the last message set them, which
    is what ``/status``, controller feedback, MIDI pickup and scenes show. ``submit`` is
    the one way to change it; every read (the properties, ``asked``, ``snapshot``) is a
    copy taken under the lock. What the music is playing at this moment is the
    steerer's, on the engine thread, a few smoothed steps behind."""

    def __init__(self, concepts: Sequence[ConceptKnob], prompt: str, settings: SamplingSettings,
                 *, vocab_size: int = 2048, stems: Sequence[StemView] = (), probe_targets: bool = False) -> None:
        self.concepts: dict[str, ConceptKnob] = {c.name: c for c in concepts}
        rows = [(c.name, c.alpha_range) for c in concepts]
        # Only a stream whose probes are read (serve's probe taps) takes a probe target.
        probes = [c.name for c in concepts if c.probe] if probe_targets else []
        self._probes = probes
        self.table: ControlTable = ControlTable(rows, vocab_size, probes) if not stems else stem_table_of(
            rows, vocab_size, stems, probes)
        #: Each stem's asked state, by row (none on a one-stream set).
        self._stems: list[StemView] = list(stems)
        self._targets: dict[str, float] = {c.name: 0.0 for c in concepts}
        self._enabled: dict[str, bool] = {c.name: True for c in concepts}
        self._prompt = prompt
        self._settings = replace(settings)
        for stem in self._stems:  # a stem without settings of its own starts with the set's
            stem.settings = {**vars(settings), **stem.settings}
        self._seed: int | None = None
        self.errors = 0
        self.last_error = ""
        self._queue: list[ControlEvent] = []
        self._queued_knob: dict[tuple[str, int | None], int] = {}  # (concept, stem row) -> its queued move
        self.coalesced = 0  # knob moves replaced in the queue by a newer one
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.wake = threading.Event()  # set on every submit, so the engine reacts at once

    def loop_ranges(self) -> dict[str, tuple[float, float]]:
        """The alpha ranges a target loop clamps to: a one-stem set's stem's own (its set
        file's), else the concepts'."""
        if len(self._stems) == 1:
            return {name: knob.alpha_range for name, knob in self._stems[0].knobs.items()}
        return self.table.alpha_ranges()

    def stem_range(self, row: int, concept: str) -> tuple[float, float] | None:
        """Row ``row``'s own alpha range for ``concept`` (a stem's, from its set file), None
        where the row holds no such knob."""
        with self._lock:
            knob = self._stems[row].knobs.get(concept) if 0 <= row < len(self._stems) else None
            return None if knob is None else knob.alpha_range

    def loop_feedforward(self) -> dict[str, FeedForward]:
        """The concepts' calibrations read backwards, for the target loops' feed-forward."""
        knobs = self._stems[0].knobs.values() if len(self._stems) == 1 else self.concepts.values()
        return {k.name: k.feedforward for k in knobs if k.feedforward is not None}

    # --- the read side (any thread): copies, taken under the lock -----------------
    @property
    def targets(self) -> Mapping[str, float]:
        """Each knob's target alpha, as asked (read-only: change it with ``submit``)."""
        with self._lock:
            return MappingProxyType(dict(self._targets))

    @property
    def enabled(self) -> Mapping[str, bool]:
        """Each concept's on/off switch, as asked (read-only)."""
        with self._lock:
            return MappingProxyType(dict(self._enabled))

    @property
    def prompt(self) -> str:
        with self._lock:
            return self._prompt

    @property
    def settings(self) -> SamplingSettings:
        """The sampling settings as asked: a copy (changing it changes nothing)."""
        with self._lock:
            return replace(self._settings)

    @property
    def seed(self) -> int | None:
        """The last seed asked for (None: the set's own)."""
        with self._lock:
            return self._seed

    def asked(self) -> Asked:
        """Everything asked, at one moment: what targets read (``Target.read``)."""
        with self._lock:
            settings = vars(self._settings).copy()
            stems = {s.name: Asked(dict(s.targets), dict(s.enabled), s.prompt, dict(s.settings), mute=s.mute, solo=s.solo)
                     for s in self._stems if s.active}
            return Asked(dict(self._targets), dict(self._enabled), self._prompt, settings, stems)

    def change(self, address: str, *args: Any) -> Change:
        """The validated change one value address asks for (a script's or a test's way in)."""
        target = self.table.get(address)
        if target is None:
            raise ControlError(f"{address} is not a control address")
        return change_for(target, target.parse(args))

    # --- the write side (control threads) ---------------------------------------
    def submit(self, changes: Sequence[Change], source: str, label: str, *, transport: str | None = None,
               arrived: float | None = None, quantize: str | None = None,
               target: tuple[TargetAsk, ...] | None = None) -> ControlEvent:
        event = ControlEvent(tuple(changes), source, label, arrived or time.monotonic(), transport, quantize=quantize,
                             target=target)
        with self._lock:
            for change in changes:
                self._update_view(change)
            queued = self._enqueue(event)
            listeners = list(self._listeners)
        if queued:  # a coalesced move replaced one the engine was already woken for
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

    # --- the engine and status ---------------------------------------------------------
    def drain(self) -> list[ControlEvent]:
        with self._lock:
            events, self._queue = self._queue, []
            self._queued_knob.clear()
        return events

    def _enqueue(self, event: ControlEvent) -> bool:
        """Under the lock. A lone alpha change replaces the queued one of its concept; anything
        else that could touch alphas (panic, a batch, transport) ends coalescing until the drain,
        so the order the engine sees stays the order that matters. A quantised move waits for its
        grid line and is never merged: the moves before it play until then. False: it replaced one."""
        change = event.changes[0] if len(event.changes) == 1 else None
        if (change is not None and change.kind == "alpha" and change.concept is not None and event.transport is None
                and event.quantize is None):
            key = (change.concept, change.stream)
            at = self._queued_knob.get(key)
            if at is not None:
                self._queue[at] = event
                self.coalesced += 1
                return False
            if change.stream is None:  # a move for every stem ends the merging of any one stem's
                self._queued_knob = {k: i for k, i in self._queued_knob.items() if k[0] != change.concept}
            else:  # and one stem's ends the every-stem move's: a later one must not overtake it
                self._queued_knob.pop((change.concept, None), None)
            self._queued_knob[key] = len(self._queue)
        elif any(c.kind in ("alpha", "panic") for c in event.changes) or event.transport is not None \
                or event.target is not None:
            self._queued_knob.clear()
        self._queue.append(event)
        return True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "targets": dict(self._targets),
                "enabled": dict(self._enabled),
                "knobs": {n: self.concepts[n].knob_from_alpha(a) for n, a in self._targets.items()},
                "prompt": self._prompt,
                "settings": vars(self._settings).copy(),
                "errors": self.errors,
                "last_error": self.last_error,
                **({"stems": {s.name: s.view() for s in self._stems if s.active}} if self._stems else {}),
            }

    @property
    def stems(self) -> list[dict[str, Any]]:
        """Each playing stem's asked state, in row order (a copy)."""
        with self._lock:
            return [s.view() for s in self._stems if s.active]

    def put_stem(self, row: int, view: StemView) -> StemTable:
        """A stem added to (or, ``view.active`` False, removed from) row ``row``: its asked
        state and the table with its ``/stem/<name>/...`` rows (``stem_live``). Returns the new table."""
        with self._lock:
            self._stems[row] = view
            table = stem_table_of([(c.name, c.alpha_range) for c in self.concepts.values()], self.table.vocab_size,
                                  self._stems, self._probes)
            self.table = table
            return table

    def _update_view(self, change: Change) -> None:
        if change.stream is not None:
            self._stems[change.stream].update(change)
            return
        for stem in self._stems:  # an unprefixed change is every stem's
            stem.update(change)
        if change.kind == "alpha" and change.concept is not None:
            self._targets[change.concept] = float(change.value)  # type: ignore[arg-type]
        elif change.kind == "enabled" and change.concept is not None:
            self._enabled[change.concept] = bool(change.value)
        elif change.kind == "prompt":
            self._prompt = str(change.value)
        elif change.kind == "panic":
            self._targets.update(dict.fromkeys(self._targets, 0.0))
        elif change.kind == "seed":
            self._seed = int(change.value)  # type: ignore[arg-type]
        elif change.kind in SETTING_BY_NAME:
            setattr(self._settings, SETTING_BY_NAME[change.kind].field, change.value)


def stem_table_of(concepts: Sequence[tuple[str, tuple[float, float]]], vocab_size: int,
                  stems: Sequence[StemView], probes: Sequence[str] = ()) -> StemTable:
    """The table of the playing stems (a spare row has no rows of its own), each at its row."""
    playing = [(row, s) for row, s in enumerate(stems) if s.active]
    return StemTable(concepts, vocab_size, [(s.name, [(k.name, k.alpha_range) for k in s.knobs.values()])
                                            for _, s in playing], [row for row, _ in playing], probes)
