"""The command table: every control address, validated the same way whoever sends it.

OSC messages, MIDI mappings and scene recalls all end up here as an address plus
arguments. A handler validates everything first and returns a ``Plan``; only when
every handler that an address (or wildcard pattern) matched has validated does
anything change. A bad message therefore changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_core.errors import UserError
from steering_core.extract.concepts import check_name
from steering_core.stream.timeline import Change

from .control import ControlError, ControlState, changes_from_view
from .midimaps import MidiMapError
from .oscmatch import AddressMatcher, PatternError, describe_unknown
from .oscwire import short
from .scenes import SceneError, SceneStore, morph

MAX_PROMPT_CHARS = 500
MAX_NAME_CHARS = 64
MAX_HOST_CHARS = 253
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


Handler = Callable[[Sequence[Any], Origin], Plan]


class Commands:
    """Address -> handler. ``run`` validates, then applies, then returns the replies."""

    def __init__(self, control: ControlState, scenes: SceneStore, status: Callable[[], dict[str, Any]]) -> None:
        self.control = control
        self.scenes = scenes
        self.status = status
        #: Set by the OSC server and the MIDI input when they exist.
        self.subscribe: Callable[[str, int, Origin, bool], None] | None = None
        self.midi_learn: Callable[[str], None] | None = None
        self.midi_save: Callable[[str], Path] | None = None
        self._matcher = AddressMatcher(())
        self._handlers: dict[str, Handler] = {}
        for name in control.concepts:
            self._add(f"/steer/{name}", self._steer(name))
            self._add(f"/steer/{name}/knob", self._knob(name))
            self._add(f"/steer/{name}/on", self._on(name))
        self._add("/prompt", self._prompt)
        for kind, parse in (("guidance", _float), ("temperature", _float), ("top_k", _int), ("top_p", _float),
                            ("seed", _int)):
            self._add(f"/gen/{kind}", self._setting(kind, parse))
        self._add("/scene/save", self._scene_save)
        self._add("/scene/recall", self._scene_recall)
        self._add("/scene/morph", self._scene_morph)
        self._add("/transport/play", self._transport("play"))
        self._add("/transport/stop", self._transport("stop"))
        self._add("/panic", self._panic)
        self._add("/midi/learn", self._learn)
        self._add("/midi/save", self._midi_save)
        self._add("/subscribe", self._subscription(True))
        self._add("/unsubscribe", self._subscription(False))
        self._add("/status", self._status)

    @property
    def addresses(self) -> list[str]:
        return list(self._handlers)

    def is_target(self, address: str) -> bool:
        """An address a knob can drive (MIDI maps and learn): steer, knob, on and /gen."""
        return address in self._handlers and address.startswith(("/steer/", "/gen/"))

    def run(self, address: str, args: Sequence[Any], origin: Origin) -> list[tuple[str, list[Any]]]:
        """Validate, then apply. Raises ``ControlError`` (having changed nothing)."""
        try:
            handlers = [self._handlers[a] for a in self._matcher.match(address)]
        except PatternError as exc:
            raise ControlError(f"bad address pattern: {exc}") from None
        if not handlers:
            raise ControlError(self._unknown(address))
        try:
            plans = [handler(args, origin) for handler in handlers]
        except ControlError:
            raise
        except UserError as exc:  # a scene file, a concept name, a setting: bad input, one /error
            raise ControlError(str(exc)) from None
        changes = [c for plan in plans for c in plan.changes]
        transport = next((p.transport for p in plans if p.transport), None)
        if changes or transport:
            self.control.submit(changes, origin.label, address, transport=transport, arrived=origin.arrived)
        replies: list[tuple[str, list[Any]]] = []
        for plan in plans:
            if plan.effect is not None:
                plan.effect()
            replies.extend(plan.replies)
        return replies

    # --- handlers ----------------------------------------------------------------
    def _add(self, address: str, handler: Handler) -> None:
        self._handlers[address] = handler
        self._matcher.add(address)

    def _unknown(self, address: str) -> str:
        return describe_unknown(address, self.control.concepts)

    def _steer(self, name: str) -> Handler:
        return lambda args, _o: Plan([self.control.alpha_change(name, _float(args, 0, 1))])

    def _knob(self, name: str) -> Handler:
        return lambda args, _o: Plan([self.control.knob_change(name, _float(args, 0, 1))])

    def _on(self, name: str) -> Handler:
        return lambda args, _o: Plan([self.control.enabled_change(name, _switch(args))])

    def _prompt(self, args: Sequence[Any], _o: Origin) -> Plan:
        text = _str(args, 0, 1, MAX_PROMPT_CHARS).strip()
        if not text:
            raise ControlError("the prompt is empty")
        return Plan([Change("prompt", text)])

    def _setting(self, kind: str, parse: Callable[[Sequence[Any], int, int], Any]) -> Handler:
        return lambda args, _o: Plan([self.control.setting_change(kind, parse(args, 0, 1))])

    def _scene_save(self, args: Sequence[Any], _o: Origin) -> Plan:
        name = check_name(_str(args, 0, 1, MAX_NAME_CHARS), "scene name")
        view = self.control.scene_view()

        def save() -> None:
            self.scenes.save(name, view)
        return Plan(effect=save)

    def _scene_recall(self, args: Sequence[Any], _o: Origin) -> Plan:
        scene = self.scenes.load(_str(args, 0, 1, MAX_NAME_CHARS))
        return Plan(changes_from_view(self.control, scene))

    def _scene_morph(self, args: Sequence[Any], _o: Origin) -> Plan:
        _arity(args, 3)
        a = self.scenes.load(_str(args, 0, 3, MAX_NAME_CHARS))
        b = self.scenes.load(_str(args, 1, 3, MAX_NAME_CHARS))
        t = _float(args, 2, 3)
        if not 0.0 <= t <= 1.0:
            raise ControlError(f"morph position {t:g} is outside 0..1")
        return Plan(changes_from_view(self.control, morph(a, b, t)))

    def _transport(self, state: str) -> Handler:
        def handler(args: Sequence[Any], _o: Origin) -> Plan:
            _arity(args, 0)
            return Plan(transport=state)
        return handler

    def _panic(self, args: Sequence[Any], _o: Origin) -> Plan:
        _arity(args, 0)
        return Plan([Change("panic")])

    def _learn(self, args: Sequence[Any], _o: Origin) -> Plan:
        target = _str(args, 0, 1, 200)
        if not self.is_target(target):
            raise ControlError(f"cannot learn {target!r}: not a knob target (e.g. /steer/<concept>/knob)")
        learn = self.midi_learn
        if learn is None:
            raise ControlError("MIDI learn needs a MIDI input (start serve with --midi-in)")
        return Plan(effect=lambda: learn(target))

    def _midi_save(self, args: Sequence[Any], _o: Origin) -> Plan:
        name = check_name(_str(args, 0, 1, MAX_NAME_CHARS), "controller map name")
        save = self.midi_save
        if save is None:
            raise ControlError("saving a MIDI map needs a MIDI input (start serve with --midi-in)")

        def effect() -> None:
            try:
                save(name)
            except MidiMapError as exc:  # the disk, not the message: still an /error reply
                raise ControlError(str(exc)) from None

        return Plan(effect=effect, replies=[("/midi/saved", [name])])

    def _subscription(self, on: bool) -> Handler:
        def handler(args: Sequence[Any], origin: Origin) -> Plan:
            host = _str(args, 0, 2, MAX_HOST_CHARS)
            port = _int(args, 1, 2)
            if not 1 <= port <= 65535:
                raise ControlError(f"port {port} is outside 1..65535")
            subscribe = self.subscribe
            if subscribe is None:
                raise ControlError("subscriptions need the OSC server")
            return Plan(effect=lambda: subscribe(host, port, origin, on))
        return handler

    def _status(self, args: Sequence[Any], _o: Origin) -> Plan:
        _arity(args, 0)
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


# --- argument checks: one clear sentence per mistake ---------------------------------
def _arity(args: Sequence[Any], n: int) -> None:
    if len(args) != n:
        raise ControlError(f"expected {n} argument{'s' if n != 1 else ''}, got {len(args)}")


def _float(args: Sequence[Any], i: int, n: int) -> float:
    _arity(args, n)
    value = args[i]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"argument {i + 1} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ControlError(f"argument {i + 1} must be finite, got {value}")
    return float(value)


def _int(args: Sequence[Any], i: int, n: int) -> int:
    value = _float(args, i, n)
    if not value.is_integer():
        raise ControlError(f"argument {i + 1} must be a whole number, got {value:g}")
    return int(value)


def _switch(args: Sequence[Any]) -> bool:
    _arity(args, 1)
    value = args[0]
    if isinstance(value, bool):
        return value
    number = _float(args, 0, 1)
    if number not in (0.0, 1.0):
        raise ControlError(f"on/off wants 0 or 1, got {number:g}")
    return number == 1.0


def _str(args: Sequence[Any], i: int, n: int, limit: int) -> str:
    _arity(args, n)
    value = args[i]
    if not isinstance(value, str):
        raise ControlError(f"argument {i + 1} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ControlError(f"argument {i + 1} is {len(value)} characters; the limit is {limit}")
    return value


__all__ = ["Commands", "ControlError", "Origin", "Plan", "SceneError", "check_name"]
