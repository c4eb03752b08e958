"""MIDI in: soft takeover, relative encoders, 14-bit CCs, learn (maps: ``midimaps.py``).

``MidiMapper`` is pure (mido messages in, command calls out) so it is testable without
ports; ``MidiInput`` feeds it from an rtmidi port on rtmidi's callback thread. Each
binding resolves to its ``targets.Target`` when the map loads, and a CC drives that
target straight away (``Commands.drive``). What MIDI learn binds can be saved as a map
of its own (``/midi/save <name>``) and loaded next time with ``serve --midi-map <name>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mido

from .commands import Commands, Origin
from .control import ControlError, ControlEvent
from .midi_port import RawMidiInput
from .midimaps import Binding, ControllerMap, MidiMapError, curve, load_map, save_map
from .rate_limited_log import RateLimitedLog
from .targets import ControlTable, Target

__all__ = ["Binding", "BoundControl", "ControllerMap", "MidiInput", "MidiMapError", "MidiMapper", "Pickup",
           "list_midi_inputs", "load_map", "midi_backend", "relative_delta", "rtmidi_api"]

log = logging.getLogger("steerbridge.midi")

PICKUP_TOLERANCE = 0.02
ORIGIN = Origin("midi")


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
class Pickup:
    """What one control is doing live (the map's ``Binding`` is what it is configured to do)."""

    position: float | None = None  # where this control believes the target is (0..1)
    picked_up: bool = True
    last_raw: float | None = None
    msb: int | None = None  # a 14-bit pair's last high byte


@dataclass
class BoundControl:
    """A binding of the map, the target it resolved to, and its live state."""

    binding: Binding
    target: Target
    live: Pickup = field(default_factory=Pickup)


class MidiMapper:
    """Turns MIDI messages into commands. ``handle`` runs on rtmidi's thread, ``learn``
    and ``save`` on the OSC thread, ``_on_event`` on whichever thread submitted a change;
    all of them hold ``_lock`` while they read or change a control's live state."""

    def __init__(self, controller: ControllerMap, commands: Commands, *,
                 scene_names: Callable[[], list[str]] | None = None) -> None:
        self.commands = commands
        self.control = commands.control
        self.table = commands.table
        self.name = controller.name
        self.program_change = controller.program_change
        self.scene_names = scene_names or commands.scenes.names
        self.controls: list[BoundControl] = []
        #: Controls for concepts that are not loaded (``@N`` past the last, or a concept
        #: a saved map names that this set does not load): kept for ``save``.
        self.unbound_bindings: list[Binding] = []
        for b in controller.bindings:
            target = self._resolve(b.target)
            if target is None:
                self.unbound_bindings.append(b)
            else:
                self.controls.append(BoundControl(b, target))
        self._learning: Target | None = None
        self._lock = threading.RLock()
        self.logs = RateLimitedLog(log)
        self.ignored = 0
        self.control.add_listener(self._on_event)

    # --- map resolution ------------------------------------------------------------
    def _resolve(self, written: str) -> Target | None:
        """``@N`` -> the N-th loaded concept, then the target of that address; None if the
        map asks for a concept that is not loaded (more than are loaded, or one named by a
        saved map); an error for anything else that is not a target a control can drive."""
        parts = written.split("/")
        names = list(self.control.concepts)
        for i, part in enumerate(parts):
            if part.startswith("@"):
                try:
                    n = int(part[1:])
                except ValueError:
                    raise MidiMapError(f"bad concept slot {part!r} in {written}") from None
                if not 1 <= n <= len(names):
                    return None
                parts[i] = names[n - 1]
        if len(parts) >= 3 and parts[1] == "steer" and parts[2] not in names:
            return None
        if len(parts) >= 4 and parts[1] == "stem" and parts[2] not in getattr(self.table, "stem_names", ()):
            return None  # a stem not in the set (yet): bound when /stem/add brings it (``retable``)
        target = self.table.get("/".join(parts))
        if target is None or (target.span is None and not target.button):
            raise MidiMapError(f"controller map target {written!r} is not a control address a MIDI control can drive")
        return target

    def retable(self, table: ControlTable) -> None:
        """The table after a stem came or went (the control thread): controls for a stem
        that left are kept unbound, and those for a stem that came are bound, fresh; the
        others keep their state (pickup, position)."""
        with self._lock:
            self.table = table
            kept: list[BoundControl] = []
            unbound: list[Binding] = []
            bound: list[tuple[Binding, BoundControl | None]] = [(c.binding, c) for c in self.controls]
            for binding, control in [*bound, *((b, None) for b in self.unbound_bindings)]:
                target = self._resolve(binding.target)
                if target is None:
                    unbound.append(binding)
                else:
                    kept.append(control if control is not None and target == control.target
                                else BoundControl(binding, target))
            self.controls, self.unbound_bindings = kept, unbound

    @property
    def unbound(self) -> list[str]:
        return [b.target for b in self.unbound_bindings]

    def save(self, name: str) -> Path:
        """Every binding, learned ones included, as the map ``name`` in the user's map folder."""
        with self._lock:
            bindings = [*(c.binding for c in self.controls), *self.unbound_bindings]
        path = save_map(name, bindings, self.program_change)
        log.info("MIDI map saved: %s (%d controls); next time: serve --midi-map %s", path, len(bindings), name)
        return path

    def learn(self, target: Target) -> None:
        with self._lock:
            self._learning = target
        log.info("MIDI learn: move a control to bind it to %s", target.address)

    # --- messages ----------------------------------------------------------------
    def handle(self, msg: mido.Message) -> None:
        # One lock for every control's live state (position, picked_up, msb, last_raw):
        # rtmidi's thread runs this, the OSC thread runs ``_on_event`` on the same controls.
        # It is re-entrant because a command run here tells the listeners, ``_on_event`` included.
        with self._lock:
            try:
                if msg.type == "control_change":
                    self._cc(msg.channel, msg.control, msg.value)
                elif msg.type == "program_change":
                    self._program(msg.program)
                else:
                    self.ignored += 1  # notes, clock, sysex...: not ours
            except ControlError as exc:
                self.control.reject(str(exc))
                self.logs.warning(msg.type, "MIDI %s rejected: %s", msg, exc)

    def _cc(self, channel: int, cc: int, value: int) -> None:
        with self._lock:
            learning, self._learning = self._learning, None
            if learning is not None:
                self.controls = [c for c in self.controls
                                 if not (c.binding.cc == cc and c.binding.channel in (None, channel))]
                learned = Binding(cc=cc, target=learning.address, channel=channel, takeover="jump")
                self.controls.append(BoundControl(learned, learning))
                log.info("MIDI learn: CC %d on channel %d -> %s", cc, channel + 1, learning.address)
            matches = [c for c in self.controls if c.binding.channel in (None, channel) and cc in (c.binding.cc, c.binding.lsb)]
        if not matches:
            self.ignored += 1
        for c in matches:
            self._drive(c, cc, value)

    def _drive(self, c: BoundControl, cc: int, value: int) -> None:
        b, live = c.binding, c.live
        if b.button:
            if cc == b.cc and value >= 64:
                self._button(c.target)
            return
        if b.mode != "absolute":
            current = live.position if live.position is not None else self._target_position(c)
            self._send(c, min(1.0, max(0.0, current + relative_delta(value, b.mode) * b.step)))
            return
        if b.lsb is not None:  # 14-bit: the MSB lands at once (LSB 0, as MIDI says), its LSB refines it
            if cc == b.cc:
                live.msb = value
                raw = (value << 7) / 16383.0
            else:
                raw = ((live.msb or 0) << 7 | value) / 16383.0
        else:
            raw = value / 127.0
        if b.takeover == "pickup" and not live.picked_up:
            target = self._target_position(c)
            crossed = live.last_raw is not None and (live.last_raw - target) * (raw - target) <= 0
            if not (crossed or abs(raw - target) <= PICKUP_TOLERANCE):
                live.last_raw = raw
                return  # the knob is not where the music is yet: turn it past that point
            live.picked_up = True
        live.last_raw = raw
        self._send(c, raw)

    def _button(self, target: Target) -> None:
        if target.kind == "on":  # a switch toggles
            self.commands.drive(target, [not target.read(self.control.asked())], ORIGIN)
        else:
            self.commands.drive(target, [], ORIGIN)

    def _send(self, c: BoundControl, position: float) -> None:
        c.live.position = position
        shaped = curve(c.binding.curve)(position)
        lo, hi = self._span(c)
        value = lo + shaped * (hi - lo)
        self.commands.drive(c.target, [round(value) if c.target.whole else value], ORIGIN)

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
        self.commands.drive(self.table["/scene/recall"], [name], ORIGIN)

    # --- knob positions -------------------------------------------------------------
    def _span(self, c: BoundControl) -> tuple[float, float]:
        return c.binding.range or c.target.span or (0.0, 1.0)

    def _target_position(self, c: BoundControl) -> float:
        """Where the target is now, as a 0..1 knob position (for pickup and encoders)."""
        lo, hi = self._span(c)
        value = c.target.read(self.control.asked())
        if not isinstance(value, int | float) or isinstance(value, bool):
            value = lo
        return min(1.0, max(0.0, (value - lo) / (hi - lo))) if hi != lo else 0.0

    def _on_event(self, event: ControlEvent) -> None:
        """Someone else (OSC, a scene, another knob) moved a target: absolute knobs on it
        must pick it up again before they take over."""
        if event.source == ORIGIN.label and event.label not in ("/scene/recall", "/scene/morph"):
            return
        touched = {t.address for c in event.changes for t in self.table.touched(c.kind, c.concept, c.stream)}
        with self._lock:
            for c in self.controls:
                if c.target.address not in touched:
                    continue
                if c.binding.mode == "absolute" and not c.binding.button:
                    c.live.picked_up = c.binding.takeover == "jump"
                c.live.position = None


# --- ports ----------------------------------------------------------------------------
_MIDO_API_NAMES = {"jack": "UNIX_JACK", "alsa": "LINUX_ALSA", "core": "MACOSX_CORE", "winmm": "WINDOWS_MM"}

@contextlib.contextmanager
def _c_stderr_captured() -> Iterator[list[str]]:
    """Collect what C libraries write straight to file descriptor 2 (JACK and ALSA print a
    dozen lines for every failed probe), so the caller can summarise it in one line."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, pytest capture): nothing to hide
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


MIDI_FIXES = ("start a JACK server (e.g. `jackd -d dummy &`, then --midi-api jack), or load the ALSA sequencer "
              "(`sudo modprobe snd-seq`, then --midi-api alsa); or play without MIDI (--midi-in none) and steer over OSC")


def midi_backend(api: str = "auto") -> Any:
    """mido's rtmidi backend on a working API: JACK when a JACK server runs (there may
    be no ALSA sequencer), else ALSA, else whatever rtmidi has. When none works: one
    ``MidiMapError`` line with each API's reason and a fix, not the libraries' noise."""
    import rtmidi

    names = {rtmidi.get_api_name(a): a for a in rtmidi.get_compiled_api()}
    order = [api] if api != "auto" else list(dict.fromkeys(["jack", "alsa", *names]))
    errors = []
    for name in order:
        if name not in names:
            continue
        with _c_stderr_captured() as noise:
            try:
                probe = rtmidi.MidiIn(names[name], "steerbridge-probe")
                probe.get_ports()
                probe.delete()
            except Exception as exc:  # rtmidi raises its own SystemError/DriverError family
                errors.append(f"{name}: {exc}")
                continue
        log.debug("MIDI probe of %s said: %s", name, " | ".join(noise))
        return mido.Backend(f"mido.backends.rtmidi/{_MIDO_API_NAMES.get(name, name)}")
    tried = "; ".join(errors) or (f"rtmidi has no {api} API" if api != "auto" else "rtmidi has no APIs")
    raise MidiMapError(f"no MIDI system available ({tried}). Fix: {MIDI_FIXES}")


def list_midi_inputs(api: str = "auto") -> list[str]:
    return list(midi_backend(api).get_input_names())


class MidiInput:
    """An rtmidi input port feeding a ``MidiMapper`` from rtmidi's thread, through the
    sysex guard of ``midi_port`` (a sysex without its end no longer silences the knobs)."""

    def __init__(self, spec: str, mapper: MidiMapper, *, api: str = "auto", client_name: str = "steerbridge") -> None:
        self.mapper = mapper

        def deliver(data: list[int], _at: float, _held: bool) -> None:
            try:
                msg = mido.Message.from_bytes(data)
            except ValueError:  # bytes no message is made of
                mapper.ignored += 1
                return
            mapper.handle(msg)

        try:
            self.port = RawMidiInput(spec, deliver, api=rtmidi_api(midi_backend(api)), client_name=client_name)
        except LookupError as exc:
            raise MidiMapError(str(exc)) from None
        self.name = self.port.name

    @property
    def sysex_dropped(self) -> int:
        return self.port.dropped

    def close(self) -> None:
        self.port.close()


def rtmidi_api(backend: Any) -> int:
    """The rtmidi API number of a mido rtmidi ``backend`` (``mido.backends.rtmidi/UNIX_JACK``)."""
    import rtmidi

    api: int = getattr(rtmidi, f"API_{backend.api}", rtmidi.API_UNSPECIFIED)
    return api
