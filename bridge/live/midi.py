"""MIDI in: soft takeover, relative encoders, 14-bit CCs, learn (maps: ``midimaps.py``).

``MidiMapper`` is pure (mido messages in, command calls out) so it is testable without
ports; ``MidiInput`` feeds it from an rtmidi port on rtmidi's callback thread. What
MIDI learn binds can be saved as a map of its own (``/midi/save <name>``) and loaded
next time with ``serve --midi-map <name>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import mido

from .commands import Commands, Origin
from .control import ControlError, ControlEvent
from .midimaps import Binding, ControllerMap, MidiMapError, curve, load_map, save_map
from .ratelog import RateLimitedLog

__all__ = ["Binding", "ControllerMap", "MidiInput", "MidiMapError", "MidiMapper", "list_midi_inputs", "load_map",
           "midi_backend", "relative_delta"]

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


class MidiMapper:
    """Turns MIDI messages into commands. ``handle`` runs on rtmidi's thread, ``learn``
    and ``save`` on the OSC thread, ``_on_event`` on whichever thread submitted a change;
    all of them hold ``_lock`` while they read or change a binding."""

    def __init__(self, controller: ControllerMap, commands: Commands, *,
                 scene_names: Callable[[], list[str]] | None = None) -> None:
        self.commands = commands
        self.control = commands.control
        self.name = controller.name
        self.program_change = controller.program_change
        self.scene_names = scene_names or commands.scenes.names
        self.bindings: list[Binding] = []
        #: Controls for concepts that are not loaded (``@N`` past the last, or a concept
        #: a saved map names that this set does not load): kept for ``save``.
        self.unbound_bindings: list[Binding] = []
        for b in controller.bindings:
            target = self._resolve(b.target)
            if target is None:
                self.unbound_bindings.append(b)
            else:
                self.bindings.append(replace(b, target=target, map_target=b.target))
        self._learning: str | None = None
        self._lock = threading.RLock()
        self.logs = RateLimitedLog(log)
        self.ignored = 0
        self.control.add_listener(self._on_event)

    # --- map resolution ------------------------------------------------------------
    def _resolve(self, target: str) -> str | None:
        """``@N`` -> the N-th loaded concept; None if the map asks for a concept that is not
        loaded (more than are loaded, or one named by a saved map); an error for anything
        else that is not a control address."""
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
        if len(parts) >= 3 and parts[1] == "steer" and parts[2] not in self.control.concepts:
            return None
        if resolved not in self.commands.addresses:
            raise MidiMapError(f"controller map target {target!r} is not a control address")
        return resolved

    @property
    def unbound(self) -> list[str]:
        return [b.target for b in self.unbound_bindings]

    def save(self, name: str) -> Path:
        """Every binding, learned ones included, as the map ``name`` in the user's map folder."""
        with self._lock:
            bindings = [*self.bindings, *self.unbound_bindings]
        path = save_map(name, bindings, self.program_change)
        log.info("MIDI map saved: %s (%d controls); next time: serve --midi-map %s", path, len(bindings), name)
        return path

    def learn(self, target: str) -> None:
        with self._lock:
            self._learning = target
        log.info("MIDI learn: move a control to bind it to %s", target)

    # --- messages ----------------------------------------------------------------
    def handle(self, msg: mido.Message) -> None:
        # One lock for every binding field (position, picked_up, msb, last_raw): rtmidi's
        # thread runs this, the OSC thread runs ``_on_event`` on the same bindings. It is
        # re-entrant because a command run here tells the listeners, ``_on_event`` included.
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
        shaped = curve(b.curve)(position)
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
        with self._lock:
            self._release(touched, panic)

    def _release(self, touched: set[str], panic: bool) -> None:
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
