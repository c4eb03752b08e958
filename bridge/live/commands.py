"""The commands: what each control target does, run the same way whoever sends it.

The targets, and how each one's arguments are parsed, are ``targets.ControlTable``'s.
OSC messages arrive here already parsed (the front process did it against the same
table); MIDI controls call ``drive`` with the target their binding resolved to when
the map loaded; ``run`` parses an address and arguments in-process (scripts, tests).
A handler checks what only the server can know (a scene on disk, a MIDI input) and
returns a ``Plan``; only when every target a message named has planned does anything
change. A bad message therefore changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steering_core.errors import UserError
from steering_core.extract.concepts import check_name
from steering_core.stream.timeline import Change

from .control import ControlError, ControlState, change_for
from .midimaps import MidiMapError
from .oscwire import short
from .scenes import SceneError, SceneStore, morph, scene_of, scene_values
from .target_loop import TargetAsk
from .target_units import LOCK_CONCEPT, UNITS
from .targets import Args, ControlTable, Target

if TYPE_CHECKING:
    from ..clock.clock import MusicalClock

#: /status/json stays one UDP datagram (65,507 bytes at most on IPv4), with room for the OSC framing.
MAX_STATUS_BYTES = 32_000


@dataclass(frozen=True)
class Origin:
    """Who sent a command: a label for logs, and for OSC the sender's (host, port)."""

    label: str
    address: tuple[str, int] | None = None
    #: ``time.monotonic()`` when the packet reached the socket: control latency counts from here.
    arrived: float | None = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    transport: str | None = None
    effect: Callable[[], None] | None = None
    replies: list[tuple[str, list[Any]]] = field(default_factory=list)
    #: When the changes land (``ControlEvent.quantize``): None at once, "default" serve's --quantize.
    quantize: str | None = None
    #: Target knobs' setpoints, offs, or the tempo lock.
    target: tuple[TargetAsk, ...] = ()


#: A target's handler: its parsed arguments (``Target.parse``) and who sent them -> a plan.
Handler = Callable[[Args, Origin], Plan]
Reply = tuple[str, list[Any]]


class Commands:
    """Target -> handler. ``execute`` plans every call, then applies, then returns the replies."""

    def __init__(self, control: ControlState, scenes: SceneStore, status: Callable[[], dict[str, Any]]) -> None:
        self.control = control
        self.table = control.table
        self.scenes = scenes
        self.status = status
        #: Set by the OSC server and the MIDI input when they exist.
        self.subscribe: Callable[[str, int, Origin, bool], None] | None = None
        self.midi_learn: Callable[[Target], None] | None = None
        self.midi_save: Callable[[str], Path] | None = None
        #: The musical clock, set by serve: /transport/* ask its source.
        self.clock: MusicalClock | None = None
        #: A set of stems' /stem/add and /stem/remove (``stem_live.StemLifecycle``), set by serve.
        self.stem_add: Callable[[str, str], Plan] | None = None
        self.stem_remove: Callable[[str], Plan] | None = None
        self.stem_entering: Callable[[int], bool] | None = None  # a row whose stem enters on the next bar
        self._handlers: dict[str, Handler] = {t.address: self._handler(t) for t in self.table}

    def retable(self, table: ControlTable) -> None:
        """The table after a stem came or went: its handlers built again (the old ones stay valid)."""
        self._handlers = {t.address: self._handler(t) for t in table}
        self.table = table

    def run(self, address: str, args: Sequence[Any], origin: Origin) -> list[Reply]:
        """Parse ``address`` (a pattern too) and ``args`` against the table, then execute."""
        return self.execute(address, self.table.parse(address, args), origin)

    def drive(self, target: Target, args: Sequence[Any], origin: Origin) -> list[Reply]:
        """One target with arguments a control computed (MIDI): checked by its parser, then executed."""
        return self.execute(target.address, [(target, target.parse(args))], origin)

    def execute(self, label: str, calls: Sequence[tuple[Target, Args]], origin: Origin) -> list[Reply]:
        """Run already-parsed calls (one message's, all or nothing). Raises ``ControlError``
        (having changed nothing); ``label`` is what the events and logs call the message."""
        try:
            plans = [self._handlers[target.address](args, origin) for target, args in calls]
        except ControlError:
            raise
        except UserError as exc:  # a scene file, a subscriber host: bad input, one /error
            raise ControlError(str(exc)) from None
        changes = [c for plan in plans for c in plan.changes]
        transport = next((p.transport for p in plans if p.transport), None)
        quantize = next((p.quantize for p in plans if p.quantize), None)
        target = tuple(ask for plan in plans for ask in plan.target) or None  # every match of a pattern
        if changes or transport or target:
            self.control.submit(changes, origin.label, label, transport=transport, arrived=origin.arrived,
                                quantize=quantize, target=target)
        replies: list[Reply] = []
        for plan in plans:
            if plan.effect is not None:
                plan.effect()
            replies.extend(plan.replies)
        return replies

    # --- handlers, by kind of target ------------------------------------------------
    def _handler(self, target: Target) -> Handler:
        kind = target.kind
        if kind == "prompt":  # a new prompt lands on the grid unless the message says otherwise
            return lambda args, _o: Plan([change_for(target, args)], quantize=target.quantize(args) or "default")
        if kind in ("alpha", "knob", "on", "setting", "seed", "panic", "mute", "solo"):
            return lambda args, _o: Plan([change_for(target, args)], quantize=target.quantize(args))
        if kind in ("target", "target_knob", "target_probe", "target_off", "sync_lock", "sync_warp"):
            return self._target(target)
        if kind == "transport":
            return self._transport(target.address.rsplit("/", 1)[1])
        if kind in ("transport_bpm", "transport_beat"):
            return self._clock_request(kind)
        if kind in ("subscribe", "unsubscribe"):
            return self._subscription(kind == "subscribe")
        if kind in ("stem_add", "stem_remove"):
            return self._stem_lifecycle(kind)
        handlers: dict[str, Handler] = {
            "scene_save": self._scene_save, "scene_recall": self._scene_recall, "scene_morph": self._scene_morph,
            "midi_learn": self._learn, "midi_save": self._midi_save, "status": self._status}
        return handlers[kind]

    def _stem_lifecycle(self, kind: str) -> Handler:
        def handler(args: Args, _o: Origin) -> Plan:
            if kind == "stem_add":
                if self.stem_add is None:
                    raise ControlError("/stem/add: this set keeps no spare rows (serve --stem-spares N)")
                return self.stem_add(str(args[0]), str(args[1]))
            if self.stem_remove is None:
                raise ControlError("/stem/remove: this set keeps no spare rows (serve --stem-spares N)")
            return self.stem_remove(str(args[0]))
        return handler

    def _scene_save(self, args: Args, _o: Origin) -> Plan:
        name, view = check_name(str(args[0]), "scene name"), scene_of(self.table, self.control.asked())

        def save() -> None:
            self.scenes.save(name, view)
        return Plan(effect=save)

    def _scene_recall(self, args: Args, _o: Origin) -> Plan:
        quantize = self.table["/scene/recall"].quantize(args) or "default"
        return Plan(self._changes_to(self.scenes.load(str(args[0]))), quantize=quantize)

    def _scene_morph(self, args: Args, _o: Origin) -> Plan:
        a, b = self.scenes.load(str(args[0])), self.scenes.load(str(args[1]))
        quantize = self.table["/scene/morph"].quantize(args) or "default"
        return Plan(self._changes_to(morph(self.table, a, b, float(args[2]))), quantize=quantize)

    def _target(self, target: Target) -> Handler:
        """A setpoint in the concept's unit, the same over the unit's knob span, off, or the lock."""
        def handler(args: Args, _o: Origin) -> Plan:
            stems = getattr(self.table, "stem_names", [])
            if target.kind == "sync_warp":  # the warp is the one stream's path stage (beat_warp.py)
                if stems:
                    raise ControlError("the beat warp plays on one stream, not on a set of stems")
                return Plan(target=(TargetAsk(LOCK_CONCEPT, warp=bool(args[0])),))
            if len(stems) > 1 and target.kind == "sync_lock":  # which stem's beat would lock is a guess
                raise ControlError(f"the tempo lock plays on a one-stem server for now (this set has {len(stems)} "
                                   f"stems); a stem's tempo can follow a target: /stem/<name>/steer/tempo/target")
            if len(stems) > 1 and target.stream is None:  # each stem's loop hears its own audio
                raise ControlError(f"a set of stems: a target knob is a stem's, /stem/<name>{target.address} "
                                   f"(stems: {', '.join(stems)})")
            # On a set of stems the loop is a stem's: an unprefixed address on a one-stem set is
            # that stem's, at its row (not row 0, when it came in on a spare row).
            stream = target.stream if target.stream is not None or not stems else getattr(self.table, "rows", [0])[0]
            if target.kind == "sync_lock":
                return Plan(target=(TargetAsk(LOCK_CONCEPT, lock=bool(args[0]), stream=stream),))
            concept = str(target.concept)
            if target.kind != "target_off" and stream is not None and self.stem_entering is not None \
                    and self.stem_entering(stream):  # its audio until the bar is the spare row's
                raise ControlError(f"{target.address}: the stem enters on the next bar; give it a target once it plays")
            # A stem's loop keeps its alpha within the stem's own range (its set file's).
            own = None if stream is None else self.control.stem_range(stream, concept)
            if target.kind == "target_off":
                return Plan(target=(TargetAsk(concept, stream=stream),))
            value = float(args[0])
            if target.kind == "target_probe":  # a probability its probe reads (probe_loop.py)
                return Plan(target=(TargetAsk(concept, value, probe=True, stream=stream, alpha_range=own),))
            if target.kind == "target_knob":  # over the concept's calibrated reach, else the unit's span
                lo, hi = self.control.concepts[concept].target_span or UNITS[concept].knob
                value = lo + value * (hi - lo)
            return Plan(target=(TargetAsk(concept, value, stream=stream, alpha_range=own),))
        return handler

    # --- the clock's source (--sync) ---------------------------------------------------
    def _transport(self, state: str) -> Handler:
        def handler(_args: Args, _o: Origin) -> Plan:
            clock = self.clock
            if clock is not None:
                # Asked before the event is queued, so the engine sees the clock roll
                # before the play: the music enters on its next downbeat. A source that
                # follows a DAW refuses: then play/stop move our music alone.
                with suppress(UserError):
                    clock.source.request_playing(state == "play")
            return Plan(transport=state)
        return handler

    def _clock_request(self, kind: str) -> Handler:
        def handler(args: Args, _o: Origin) -> Plan:
            clock = self.clock
            if clock is None:
                raise ControlError("no musical clock runs here (serve starts one)")
            source = clock.source

            def effect() -> None:
                try:
                    if kind == "transport_bpm":
                        source.request_tempo(float(args[0]))
                    else:
                        source.request_beat(float(args[0]))
                except UserError as exc:  # a source that follows another clock says who sets it
                    raise ControlError(str(exc)) from None
            return Plan(effect=effect)
        return handler

    def _changes_to(self, scene: dict[str, Any]) -> list[Change]:
        """Changes that bring the asked state to a scene's; what it already is, is left alone
        (an unchanged prompt would re-prime the stream for nothing). A knob a target can drive
        gets its alpha all the same: a target leaves the asked alpha stale, and the recall's
        alpha change is what takes the knob back from its target (``TargetLoop.touched``)."""
        asked = self.control.asked()
        return [change_for(target, target.parse((value,))) for target, value in scene_values(self.table, scene)
                if value != target.read(asked) or (target.kind == "alpha" and target.concept in UNITS)]

    def _learn(self, args: Args, _o: Origin) -> Plan:
        target = self.table[str(args[0])]
        learn = self.midi_learn
        if learn is None:
            raise ControlError("MIDI learn needs a MIDI input (start serve with --midi-in)")
        return Plan(effect=lambda: learn(target))

    def _midi_save(self, args: Args, _o: Origin) -> Plan:
        name, save = check_name(str(args[0]), "controller map name"), self.midi_save
        if save is None:
            raise ControlError("saving a MIDI map needs a MIDI input (start serve with --midi-in)")

        def effect() -> None:
            try:
                save(name)
            except MidiMapError as exc:  # the disk, not the message: still an /error reply
                raise ControlError(str(exc)) from None

        return Plan(effect=effect, replies=[("/midi/saved", [name])])

    def _subscription(self, on: bool) -> Handler:
        def handler(args: Args, origin: Origin) -> Plan:
            host, port, subscribe = str(args[0]), int(args[1]), self.subscribe
            if subscribe is None:
                raise ControlError("subscriptions need the OSC server")
            return Plan(effect=lambda: subscribe(host, port, origin, on))
        return handler

    def _status(self, _args: Args, _o: Origin) -> Plan:
        return Plan(replies=[("/status/json", [status_json(self.status())])])


def status_json(status: dict[str, Any], limit: int = MAX_STATUS_BYTES) -> str:
    """``/status`` as JSON that always fits one datagram: the error text is cut first,
    then the per-concept tables are dropped (``"truncated": true`` says so)."""
    text = json.dumps(status)
    if len(text.encode()) <= limit:
        return text
    status = {**status, "last_error": short(str(status.get("last_error", "")), 200), "truncated": True}
    text = json.dumps(status)
    if len(text.encode()) <= limit:
        return text
    small = {k: v for k, v in status.items() if not isinstance(v, dict | list)}
    small["truncated"] = True
    return json.dumps(small)[:limit]


__all__ = ["Commands", "ControlError", "Origin", "Plan", "SceneError", "status_json"]
