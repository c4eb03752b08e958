"""One MIDI input port as raw bytes with their arrival times, guarded against an unterminated sysex.

rtmidi (its JACK back end) joins every event after an ``F0`` that does not end in ``F7``
into one message and hands nothing over until an ``F7`` comes: a stray ``F0 01 02``
silenced every knob, and the clock, until then. Two guards undo that:

- ``split_held`` cuts a sysex at the first new status byte (MIDI's own rule: any status
  byte but a real-time one ends a sysex) and recovers the messages rtmidi held back
  behind it; real-time bytes inside a sysex (clock ticks) are messages of their own.
- On JACK a *terminator* (a private output connected to our input) sends a lone ``F7``
  whenever the port has been quiet for ``TERMINATOR_S``, so a held sysex is released
  within that time instead of never. A quiet port gets a byte it ignores.

Arrival times come from rtmidi's own delta times (stamped where the back end received
the event, not where Python got the GIL), anchored to ``time.monotonic()`` by the
smallest lag seen recently: a message is never handed over before it arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import mido

from .rate_limited_log import RateLimitedLog

log = logging.getLogger("steerbridge.midi")

SYSEX_START, SYSEX_END = 0xF0, 0xF7
TERMINATOR_S = 0.1  # how long a held sysex may silence the port, at most
ANCHOR_WINDOW = 256  # messages over which the smallest receipt lag anchors rtmidi's times

#: Where a port hands each message: its bytes, its arrival (``time.monotonic()`` seconds),
#: and whether rtmidi held it back behind a sysex (then its time is when it was released).
RawSink = Callable[[list[int], float, bool], None]


def _is_realtime(byte: int) -> bool:
    return byte >= 0xF8


def split_held(data: list[int]) -> tuple[list[list[int]], bool]:
    """The messages in what rtmidi handed over, and whether a sysex in it was cut short.

    A message that is not a sysex comes back as it is. A sysex ending in ``F7`` comes back
    whole (without the real-time bytes inside it, which come back as their own messages).
    A sysex that a new status byte interrupts is dropped, and the bytes from that status
    byte on are parsed as the messages they are. A lone ``F7`` (a terminator's) is nothing."""
    if not data or data[0] != SYSEX_START:
        return ([data] if data and data != [SYSEX_END] else []), False
    realtime: list[list[int]] = []
    body = [SYSEX_START]
    for i in range(1, len(data)):
        byte = data[i]
        if byte < 0x80:
            body.append(byte)
        elif _is_realtime(byte):
            realtime.append([byte])
        elif byte == SYSEX_END:
            body.append(byte)
            rest, cut = split_held(data[i + 1:]) if i + 1 < len(data) else ([], False)
            return [body, *realtime, *rest], cut
        else:  # a new status byte ends the sysex there
            tokens = mido.tokenizer.Tokenizer(data[i:])
            return [*realtime, *(list(t) for t in tokens)], True
    return realtime, False  # cannot happen from rtmidi (it hands over only at an F7); kept safe


class RawMidiInput:
    """An rtmidi input (a virtual port, or the first port whose name contains ``spec``),
    handing raw messages to ``sink`` on rtmidi's thread. ``dropped`` counts sysexes cut short."""

    def __init__(self, spec: str, sink: RawSink, *, api: int, client_name: str = "steerbridge",
                 port_name: str | None = None) -> None:
        import rtmidi

        self.sink = sink
        self.dropped = 0
        self.logs = RateLimitedLog(log, per_interval=1, interval_s=60.0)
        self._stamp = _ArrivalClock()
        self._last_delivery = time.monotonic()
        self._closed = threading.Event()
        self._terminator: Any = None
        self._ended_by_us = False  # the terminator sent its end byte since the last delivery
        self.rt = rtmidi.MidiIn(api, client_name)
        self.rt.ignore_types(sysex=False, timing=False, active_sense=True)
        before = self._own_inputs(api, client_name)
        if spec == "virtual":
            self.rt.open_virtual_port(port_name or client_name)
            self.name = f"{client_name} (virtual)"
        else:
            names = self.rt.get_ports()
            found = [i for i, n in enumerate(names) if spec.lower() in n.lower()]
            if not found:
                self.rt.delete()
                raise LookupError(f"no MIDI input matching {spec!r} (inputs: {', '.join(names) or 'none'})")
            self.rt.open_port(found[0], port_name or client_name)
            self.name = names[found[0]]
        self.rt.set_callback(self._received)
        if before is not None:
            self._start_terminator(before)

    # --- messages, on rtmidi's thread ----------------------------------------------
    def _received(self, event: tuple[list[int], float], _data: object = None) -> None:
        data, delta = event
        # What came out of a sysex arrived when rtmidi let it go; the deltas of the events it
        # held are lost, so the anchor starts again.
        held = bool(data) and data[0] == SYSEX_START
        at = self._stamp.arrival(delta, time.monotonic(), restart=held)
        self._last_delivery = time.monotonic()
        messages, cut = split_held(data)
        ended_by_us, self._ended_by_us = self._ended_by_us, False
        if held and ended_by_us and not cut:  # its end byte was the terminator's: it had none
            cut = True
            messages = [m for m in messages if m[0] != SYSEX_START]
        if cut:
            self.dropped += 1
            self.logs.warning("sysex", "MIDI in %s: a sysex without its end (F7) was cut short and dropped; the %d "
                              "messages held behind it were let through (counted in /status/json midi.sysex_dropped)",
                              self.name, len(messages))
        for message in messages:
            try:
                self.sink(message, at, held)
            except Exception as exc:  # rtmidi's thread must never die on our account
                log.warning("MIDI message %s dropped: %s", message, exc)

    # --- the terminator (JACK) -------------------------------------------------------
    def _own_inputs(self, api: int, client_name: str) -> list[str] | None:
        """JACK's MIDI inputs before ours opens (the one that appears after is ours), or
        None where the back end ends a held sysex itself (not JACK)."""
        import rtmidi

        if api != rtmidi.API_UNIX_JACK:
            return None
        self._terminator = rtmidi.MidiOut(api, f"{client_name}-sysex-end")
        ports: list[str] = self._terminator.get_ports()
        return ports

    def _start_terminator(self, before: list[str]) -> None:
        after = self._terminator.get_ports()
        new = [i for i, n in enumerate(after) if n not in before]
        if len(new) != 1:  # another client registered a port at the same moment: cannot tell ours
            log.debug("MIDI sysex terminator not connected (new inputs: %s)", [after[i] for i in new])
            self._terminator.delete()
            self._terminator = None
            return
        self._terminator.open_port(new[0], "sysex-end")
        threading.Thread(target=self._terminate_held, name="midi-sysex-end", daemon=True).start()

    def _terminate_held(self) -> None:
        while not self._closed.wait(TERMINATOR_S):
            if time.monotonic() - self._last_delivery >= TERMINATOR_S:
                try:
                    self._ended_by_us = True
                    self._terminator.send_message([SYSEX_END])
                except Exception:  # closing under our feet: the next wait ends the loop
                    continue

    def close(self) -> None:
        self._closed.set()
        self.rt.cancel_callback()
        self.rt.close_port()
        self.rt.delete()
        if self._terminator is not None:
            self._terminator.close_port()
            self._terminator.delete()


class _ArrivalClock:
    """rtmidi's delta times summed, placed on ``time.monotonic()`` by the smallest lag
    (receipt minus summed time) of the last ``ANCHOR_WINDOW`` messages: the receipt is
    never earlier than the arrival, and the least delayed receipt is the closest to it."""

    def __init__(self) -> None:
        self._summed = 0.0
        self._lags: deque[float] = deque(maxlen=ANCHOR_WINDOW)

    def arrival(self, delta: float, received: float, *, restart: bool = False) -> float:
        if restart:
            self._lags.clear()
        self._summed += delta
        self._lags.append(received - self._summed)
        return self._summed + min(self._lags)
