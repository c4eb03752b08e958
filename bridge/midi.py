"""MIDI in: controller maps, soft takeover, relative encoders, 14-bit CCs, learn.

A controller map (``presets/mappings/<name>.yaml``) binds CCs to the same addresses
OSC uses, so a knob and a fader in a DAW go through one validation path::

    channel: 1                 # 1-16, or omitted for any channel
    controls:
      - cc: 16                 # knob 1
        target: /steer/@1/knob # @N: the N-th loaded concept
        range: [0, 1]          # optional: the target's values the knob spans
        curve: linear          # linear | exp | log | scurve
        mode: absolute         # absolute | relative_twos | relative_offset | relative_signed
        step: 0.01             # relative modes: change per encoder tick (of the 0..1 span)
        lsb: 48                # optional: 14-bit pair, this CC carries the low 7 bits
        takeover: pickup       # pickup (default for absolute) | jump
      - cc: 41
        target: /transport/play
        button: true           # fires on press (value >= 64)
    program_change: scenes     # program N recalls the N-th scene (sorted), or a {N: name} map

``MidiMapper`` is pure (mido messages in, command calls out) so it is testable without
ports; ``MidiInput`` feeds it from an rtmidi port on rtmidi's callback thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import mido

from steering_core.concepts import PRESETS_DIR, check_name

from .commands import Commands, Origin
from .control import ControlError, ControlEvent
from .presetfiles import read_preset

log = logging.getLogger("steerbridge.midi")

MAPPINGS_DIR = PRESETS_DIR / "mappings"
MODES = ("absolute", "relative_twos", "relative_offset", "relative_signed")
PICKUP_TOLERANCE = 0.02
ORIGIN = Origin("midi")


class MidiMapError(ValueError):
    """A controller map that cannot be used, or a MIDI system that is not there."""


def _curve(name: str) -> Callable[[float], float]:
    k = 3.0
    curves: dict[str, Callable[[float], float]] = {
        "linear": lambda x: x,
        "exp": lambda x: (math.exp(k * x) - 1) / (math.exp(k) - 1),
        "log": lambda x: math.log1p((math.exp(k) - 1) * x) / k,
        "scurve": lambda x: x * x * (3 - 2 * x),
    }
    if name not in curves:
        raise MidiMapError(f"unknown curve {name!r} (choose {', '.join(curves)})")
    return curves[name]


def relative_delta(value: int, mode: str) -> int:
    """Encoder ticks from one relative CC value."""
    if mode == "relative_twos":  # 1..63 up, 127..65 down (-1..-63)
        return value - 128 if value >= 64 else value
    if mode == "relative_offset":  # 64 is rest: 65 = +1, 63 = -1
        return value - 64
    if mode == "relative_signed":  # bit 6 is the sign: 1..63 up, 65..127 down
        return -(value - 64) if value >= 64 else value
    raise MidiMapError(f"not a relative mode: {mode}")


@dataclass
class Binding:
    cc: int
    target: str
    range: tuple[float, float] | None = None
    curve: str = "linear"
    mode: str = "absolute"
    step: float = 0.01
    lsb: int | None = None
    takeover: str = "pickup"
    button: bool = False
    channel: int | None = None  # 0-15, None = any
    # live state
    position: float | None = None  # where this control believes the target is (0..1)
    picked_up: bool = True
    last_raw: float | None = None
    msb: int | None = None


@dataclass
class ControllerMap:
    name: str
    bindings: list[Binding]
    program_change: str | dict[int, str] | None = None
    notes: list[str] = field(default_factory=list)


def available_maps() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def load_map(spec: str) -> ControllerMap:
    """A map preset by name or a .yaml path."""
    path, raw = read_preset(spec, MAPPINGS_DIR, "controller map", MidiMapError)
    if not isinstance(raw, dict) or not isinstance(raw.get("controls"), list):
        raise MidiMapError(f"controller map {path.name}: expected a mapping with a 'controls' list")
    channel = _channel(raw.get("channel"), path.name)
    bindings = [_binding(entry, channel, path.name) for entry in raw["controls"]]
    pc = raw.get("program_change")
    if pc is not None and pc != "scenes" and not isinstance(pc, dict):
        raise MidiMapError(f"controller map {path.name}: program_change must be 'scenes' or a number->scene map")
    if isinstance(pc, dict):
        pc = {int(k): check_name(str(v), "scene name") for k, v in pc.items()}
    return ControllerMap(str(raw.get("name", path.stem)), bindings, pc)


def _channel(value: Any, where: str) -> int | None:
    if value is None or value == "any":
        return None
    if isinstance(value, int) and 1 <= value <= 16:
        return value - 1
    raise MidiMapError(f"controller map {where}: channel must be 1-16 or 'any', got {value!r}")


def _binding(entry: Any, channel: int | None, where: str) -> Binding:
    if not isinstance(entry, dict):
        raise MidiMapError(f"controller map {where}: each control must be a mapping, got {entry!r}")
    try:
        cc = int(entry["cc"])
        target = str(entry["target"])
    except (KeyError, TypeError, ValueError):
        raise MidiMapError(f"controller map {where}: each control needs 'cc' and 'target': {entry!r}") from None
    lsb = entry.get("lsb")
    if not 0 <= cc <= 127 or (lsb is not None and not 0 <= int(lsb) <= 127):
        raise MidiMapError(f"controller map {where}: CC numbers are 0-127: {entry!r}")
    mode = str(entry.get("mode", "absolute"))
    if mode not in MODES:
        raise MidiMapError(f"controller map {where}: unknown mode {mode!r} (choose {', '.join(MODES)})")
    rng = entry.get("range")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, int | float) for v in rng)):
            raise MidiMapError(f"controller map {where}: range must be [low, high]: {entry!r}")
        rng = (float(rng[0]), float(rng[1]))
    curve = str(entry.get("curve", "linear"))
    _curve(curve)
    takeover = str(entry.get("takeover", "pickup"))
    if takeover not in ("pickup", "jump"):
        raise MidiMapError(f"controller map {where}: takeover is 'pickup' or 'jump', got {takeover!r}")
    return Binding(cc=cc, target=target, range=rng, curve=curve, mode=mode, step=float(entry.get("step", 0.01)),
                   lsb=None if lsb is None else int(lsb), takeover=takeover, button=bool(entry.get("button", False)),
                   channel=_channel(entry["channel"], where) if "channel" in entry else channel)


class MidiMapper:
    """Turns MIDI messages into commands. Call ``handle`` from any one thread."""

    def __init__(self, controller: ControllerMap, commands: Commands, *,
                 scene_names: Callable[[], list[str]] | None = None) -> None:
        self.commands = commands
        self.control = commands.control
        self.name = controller.name
        self.program_change = controller.program_change
        self.scene_names = scene_names or commands.scenes.names
        self.bindings: list[Binding] = []
        self.unbound: list[str] = []
        for b in controller.bindings:
            target = self._resolve(b.target)
            if target is None:
                self.unbound.append(b.target)
            else:
                self.bindings.append(replace(b, target=target))
        self._learning: str | None = None
        self._lock = threading.Lock()
        self.ignored = 0
        self.control.add_listener(self._on_event)

    # --- map resolution ------------------------------------------------------------
    def _resolve(self, target: str) -> str | None:
        """``@N`` -> the N-th loaded concept; None if the map asks for more than is loaded."""
        parts = target.split("/")
        for i, part in enumerate(parts):
            if part.startswith("@"):
                names = list(self.control.concepts)
                try:
                    n = int(part[1:])
                except ValueError:
                    raise MidiMapError(f"bad concept slot {part!r} in {target}") from None
                if not 1 <= n <= len(names):
                    return None
                parts[i] = names[n - 1]
        resolved = "/".join(parts)
        if resolved not in self.commands.addresses:
            raise MidiMapError(f"controller map target {target!r} is not a control address")
        return resolved

    def learn(self, target: str) -> None:
        with self._lock:
            self._learning = target
        log.info("MIDI learn: move a control to bind it to %s", target)

    # --- messages ----------------------------------------------------------------
    def handle(self, msg: mido.Message) -> None:
        try:
            if msg.type == "control_change":
                self._cc(msg.channel, msg.control, msg.value)
            elif msg.type == "program_change":
                self._program(msg.program)
            else:
                self.ignored += 1  # notes, clock, sysex...: not ours
        except ControlError as exc:
            self.control.reject(str(exc))
            log.warning("MIDI %s rejected: %s", msg, exc)

    def _cc(self, channel: int, cc: int, value: int) -> None:
        with self._lock:
            learning, self._learning = self._learning, None
            if learning is not None:
                self.bindings = [b for b in self.bindings if not (b.cc == cc and b.channel in (None, channel))]
                self.bindings.append(Binding(cc=cc, target=learning, channel=channel, takeover="jump"))
                log.info("MIDI learn: CC %d on channel %d -> %s", cc, channel + 1, learning)
            matches = [b for b in self.bindings if b.channel in (None, channel) and cc in (b.cc, b.lsb)]
        if not matches:
            self.ignored += 1
        for b in matches:
            self._drive(b, cc, value)

    def _drive(self, b: Binding, cc: int, value: int) -> None:
        if b.button:
            if cc == b.cc and value >= 64:
                self._button(b)
            return
        if b.mode != "absolute":
            current = b.position if b.position is not None else self._target_position(b)
            self._send(b, min(1.0, max(0.0, current + relative_delta(value, b.mode) * b.step)))
            return
        if b.lsb is not None:  # 14-bit: the MSB lands at once (LSB 0, as MIDI says), its LSB refines it
            if cc == b.cc:
                b.msb = value
                raw = (value << 7) / 16383.0
            else:
                raw = ((b.msb or 0) << 7 | value) / 16383.0
        else:
            raw = value / 127.0
        if b.takeover == "pickup" and not b.picked_up:
            target = self._target_position(b)
            crossed = b.last_raw is not None and (b.last_raw - target) * (raw - target) <= 0
            if not (crossed or abs(raw - target) <= PICKUP_TOLERANCE):
                b.last_raw = raw
                return  # the knob is not where the music is yet: turn it past that point
            b.picked_up = True
        b.last_raw = raw
        self._send(b, raw)

    def _button(self, b: Binding) -> None:
        if b.target.endswith("/on"):
            name = b.target.split("/")[2]
            self._run(b.target, [0 if self.control.enabled.get(name, True) else 1])
        else:
            self._run(b.target, [])

    def _send(self, b: Binding, position: float) -> None:
        b.position = position
        shaped = _curve(b.curve)(position)
        lo, hi = b.range or self._default_range(b.target)
        value = lo + shaped * (hi - lo)
        if b.target == "/gen/top_k" or b.target == "/gen/seed":
            value = round(value)
        self._run(b.target, [value])

    def _run(self, address: str, args: Sequence[Any]) -> None:
        self.commands.run(address, args, ORIGIN)

    def _program(self, program: int) -> None:
        pc = self.program_change
        if pc is None:
            self.ignored += 1
            return
        if isinstance(pc, Mapping):
            name = pc.get(program)
        else:
            names = self.scene_names()
            name = names[program] if program < len(names) else None
        if name is None:
            raise ControlError(f"program change {program} has no scene")
        self._run("/scene/recall", [name])

    # --- knob positions -------------------------------------------------------------
    def _default_range(self, target: str) -> tuple[float, float]:
        parts = target.split("/")
        if target.startswith("/steer/") and len(parts) == 3:
            return self.control.concept(parts[2]).alpha_range
        return {"/gen/guidance": (1.0, 8.0), "/gen/temperature": (0.5, 1.5), "/gen/top_k": (1.0, 250.0),
                "/gen/top_p": (0.0, 1.0)}.get(target, (0.0, 1.0))

    def _target_position(self, b: Binding) -> float:
        """Where the target is now, as a 0..1 knob position (for pickup and encoders)."""
        parts = b.target.split("/")
        lo, hi = b.range or self._default_range(b.target)
        if b.target.startswith("/steer/") and len(parts) in (3, 4):
            alpha = self.control.targets.get(parts[2], 0.0)
            value = self.control.concepts[parts[2]].knob_from_alpha(alpha) if len(parts) == 4 else alpha
        else:
            settings = self.control.settings
            value = {"/gen/guidance": settings.guidance_scale, "/gen/temperature": settings.temperature,
                     "/gen/top_k": settings.top_k, "/gen/top_p": settings.top_p}.get(b.target, lo)
        return min(1.0, max(0.0, (value - lo) / (hi - lo))) if hi != lo else 0.0

    def _on_event(self, event: ControlEvent) -> None:
        """Someone else (OSC, a scene, another knob) moved a target: absolute knobs on it
        must pick it up again before they take over."""
        if event.source == ORIGIN.label and event.label not in ("/scene/recall", "/scene/morph"):
            return
        touched = {c.concept for c in event.changes if c.concept} | {
            f"/gen/{c.kind}" for c in event.changes if c.kind in ("guidance", "temperature", "top_k", "top_p")}
        panic = any(c.kind == "panic" for c in event.changes)
        for b in self.bindings:
            parts = b.target.split("/")
            hit = panic or b.target in touched or (b.target.startswith("/steer/") and parts[2] in touched)
            if hit and b.mode == "absolute" and not b.button:
                b.picked_up = b.takeover == "jump"
                b.position = None
            elif hit:
                b.position = None


# --- ports ----------------------------------------------------------------------------
_MIDO_API_NAMES = {"jack": "UNIX_JACK", "alsa": "LINUX_ALSA", "core": "MACOSX_CORE", "winmm": "WINDOWS_MM"}

def midi_backend(api: str = "auto") -> Any:
    """mido's rtmidi backend on a working API: JACK when a JACK server runs (there may
    be no ALSA sequencer), else ALSA, else whatever rtmidi has."""
    import rtmidi

    names = {rtmidi.get_api_name(a): a for a in rtmidi.get_compiled_api()}
    order = [api] if api != "auto" else ["jack", "alsa", *names]
    errors = []
    for name in order:
        if name not in names:
            continue
        try:
            probe = rtmidi.MidiIn(names[name], "steerbridge-probe")
            probe.get_ports()
            probe.delete()
        except Exception as exc:  # rtmidi raises its own SystemError/DriverError family
            errors.append(f"{name}: {exc}")
            continue
        return mido.Backend(f"mido.backends.rtmidi/{_MIDO_API_NAMES.get(name, name)}")
    raise MidiMapError(f"no MIDI system available ({'; '.join(errors) or 'rtmidi has no APIs'})")


def list_midi_inputs(api: str = "auto") -> list[str]:
    return list(midi_backend(api).get_input_names())


class MidiInput:
    """An rtmidi input port feeding a ``MidiMapper`` from rtmidi's thread."""

    def __init__(self, spec: str, mapper: MidiMapper, *, api: str = "auto", client_name: str = "steerbridge") -> None:
        self.mapper = mapper
        backend = midi_backend(api)

        def callback(msg: mido.Message) -> None:
            try:
                mapper.handle(msg)
            except Exception as exc:  # rtmidi's thread must never die on our account
                log.warning("MIDI message %r dropped: %s", msg, exc)

        if spec == "virtual":
            self.port = backend.open_input(client_name, virtual=True, callback=callback)
            self.name = f"{client_name} (virtual)"
        else:
            names = backend.get_input_names()
            found = [n for n in names if spec.lower() in n.lower()]
            if not found:
                raise MidiMapError(f"no MIDI input matching {spec!r} (inputs: {', '.join(names) or 'none'})")
            self.port = backend.open_input(found[0], callback=callback)
            self.name = found[0]

    def close(self) -> None:
        self.port.close()
