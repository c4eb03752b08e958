"""OSC over UDP: one blocking receive loop on its own thread, so messages keep their order.

Every datagram is parsed here (python-osc's parser), never trusted: an undecodable
packet, a wrong type, NaN, an unknown concept... is counted in ``errors``, answered
with ``/error s`` to the sender, logged, and changes nothing.

Bundles with a future timetag (TouchDesigner sends them) are queued and fired by this
same loop when due; the loop never sleeps on them, so ``/status`` still answers at
once. Timetags further ahead than ``MAX_FUTURE_S`` are refused: a sender whose clock is
that far off would otherwise schedule knob moves for next week.

``/subscribe host port`` adds a feedback destination: target changes go back, at most
``FEEDBACK_HZ`` times a second per address, to every subscriber except the one that
made the change (so a fader being dragged is not yanked back by its own echo).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from .commands import Commands, Origin
from .control import ControlError, ControlEvent, ControlState

log = logging.getLogger("steerbridge.osc")

MAX_FUTURE_S = 10.0
FEEDBACK_HZ = 25.0
MAX_SUBSCRIBERS = 16
ERROR_LOGS_PER_S = 5


@dataclass(frozen=True)
class Subscriber:
    host: str
    port: int
    sender: str  # the origin label of whoever subscribed: their own moves are not echoed

    @property
    def label(self) -> str:
        return f"osc {self.host}:{self.port}"


def encode(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class OscServer:
    def __init__(self, commands: Commands, host: str = "127.0.0.1", port: int = 9000) -> None:
        self.commands = commands
        self.control: ControlState = commands.control
        try:
            self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen for OSC on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.settimeout(0.05)
        self.host, self.port = self.sock.getsockname()[:2]
        self.packets = 0
        self.subscribers: dict[tuple[str, int], Subscriber] = {}
        self._scheduled: list[tuple[float, int, str, list[Any], Origin]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._pending: dict[str, tuple[list[Any], str]] = {}  # feedback address -> (args, origin label)
        self._pending_lock = threading.Lock()
        self._error_window = (0.0, 0)
        commands.subscribe = self._subscribe
        self.control.add_listener(self._on_event)
        self._threads = [threading.Thread(target=self._serve, name="osc", daemon=True),
                         threading.Thread(target=self._feedback, name="osc-feedback", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()
        log.info("OSC listening on %s:%d (send /status for the full state)", self.host, self.port)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2)
        self.sock.close()

    # --- receive loop ----------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            self._fire_due()
            timeout = 0.05
            if self._scheduled:
                timeout = min(timeout, max(0.0005, self._scheduled[0][0] - time.time()))
            self.sock.settimeout(timeout)
            try:
                data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                if self._stop.is_set():
                    break
                continue
            try:
                self._packet(data, (addr[0], addr[1]))
            except Exception as exc:  # a bug must not take the server down mid-set
                log.exception("OSC packet from %s:%d crashed its handler: %s", addr[0], addr[1], exc)
                self.control.reject(f"internal error: {exc}")

    def _packet(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        origin = Origin(f"osc {addr[0]}:{addr[1]}", addr)
        try:
            packet = OscPacket(data)
        except ParseError:
            self._reject(origin, "(packet)", f"undecodable OSC packet ({len(data)} bytes)")
            return
        now = time.time()
        for timed in packet.messages:
            msg = timed.message
            if timed.time > now + MAX_FUTURE_S:
                self._reject(origin, msg.address, f"bundle timetag is {timed.time - now:.0f} s ahead (limit "
                             f"{MAX_FUTURE_S:.0f} s); is the sender's clock right?")
            elif timed.time > now + 0.001:
                heapq.heappush(self._scheduled, (timed.time, next(self._seq), msg.address, list(msg.params), origin))
            else:
                self._dispatch(msg.address, list(msg.params), origin)

    def _fire_due(self) -> None:
        now = time.time()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, address, args, origin = heapq.heappop(self._scheduled)
            self._dispatch(address, args, origin)

    def _dispatch(self, address: str, args: list[Any], origin: Origin) -> None:
        try:
            replies = self.commands.run(address, args, origin)
        except ControlError as exc:
            self._reject(origin, address, str(exc))
            return
        except OSError as exc:  # e.g. a scene could not be written
            self._reject(origin, address, f"could not complete: {exc}")
            return
        for reply_address, reply_args in replies:
            self._send(origin.address, reply_address, reply_args)

    def _reject(self, origin: Origin, address: str, reason: str) -> None:
        self.control.reject(f"{address}: {reason}")
        self._send(origin.address, "/error", [f"{address}: {reason}"])
        # At most a few lines a second: a misconfigured patch must not bury the log.
        second, count = self._error_window
        now = time.monotonic()
        if now - second >= 1.0:
            second, count = now, 0
        if count < ERROR_LOGS_PER_S:
            log.warning("OSC %s from %s rejected: %s", address, origin.label.removeprefix("osc "), reason)
        self._error_window = (second, count + 1)

    def _send(self, addr: tuple[str, int] | None, address: str, args: list[Any]) -> None:
        if addr is None:
            return
        try:
            self.sock.sendto(encode(address, args), addr)
        except OSError as exc:
            log.debug("OSC reply to %s failed: %s", addr, exc)

    # --- feedback ------------------------------------------------------------------------
    def _subscribe(self, host: str, port: int, origin: Origin, on: bool) -> None:
        try:
            resolved = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
        except (OSError, UnicodeError) as exc:
            raise ControlError(f"cannot resolve subscriber host {host!r}: {exc}") from None
        key = (str(resolved), port)
        if not on:
            self.subscribers.pop(key, None)
            return
        if key not in self.subscribers and len(self.subscribers) >= MAX_SUBSCRIBERS:
            raise ControlError(f"too many subscribers (limit {MAX_SUBSCRIBERS})")
        sub = Subscriber(key[0], port, origin.label)
        self.subscribers[key] = sub
        log.info("OSC feedback to %s:%d", key[0], port)
        for address, args in self._full_state():  # bring the new surface up to date at once
            self._send(key, address, args)

    def _full_state(self) -> list[tuple[str, list[Any]]]:
        view = self.control.snapshot()
        out: list[tuple[str, list[Any]]] = []
        for name, alpha in view["targets"].items():  # type: ignore[attr-defined]
            out += [(f"/steer/{name}", [alpha]), (f"/steer/{name}/knob", [view["knobs"][name]]),  # type: ignore[index]
                    (f"/steer/{name}/on", [int(view["enabled"][name])])]  # type: ignore[index]
        out.append(("/prompt", [view["prompt"]]))
        settings = view["settings"]
        out += [("/gen/guidance", [settings["guidance_scale"]]), ("/gen/temperature", [settings["temperature"]]),  # type: ignore[index]
                 ("/gen/top_k", [settings["top_k"]]), ("/gen/top_p", [settings["top_p"]])]  # type: ignore[index]
        return out

    def _on_event(self, event: ControlEvent) -> None:
        updates: list[tuple[str, list[Any]]] = []
        concepts = self.control.concepts
        for change in event.changes:
            if change.kind == "alpha" and change.concept:
                alpha = float(change.value)  # type: ignore[arg-type]
                updates += [(f"/steer/{change.concept}", [alpha]),
                            (f"/steer/{change.concept}/knob", [concepts[change.concept].knob_from_alpha(alpha)])]
            elif change.kind == "enabled":
                updates.append((f"/steer/{change.concept}/on", [int(bool(change.value))]))
            elif change.kind == "prompt":
                updates.append(("/prompt", [change.value]))
            elif change.kind == "panic":
                for name, knob in concepts.items():
                    updates += [(f"/steer/{name}", [0.0]), (f"/steer/{name}/knob", [knob.knob_from_alpha(0.0)])]
            elif change.kind != "seed":
                updates.append((f"/gen/{change.kind}", [change.value]))
        if event.transport:
            updates.append(("/transport/playing", [int(event.transport == "play")]))
        with self._pending_lock:
            for address, args in updates:
                self._pending[address] = (args, event.source)  # newest wins: that is the throttle

    def _feedback(self) -> None:
        period = 1.0 / FEEDBACK_HZ
        while not self._stop.wait(period):
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            if not pending or not self.subscribers:
                continue
            for sub in list(self.subscribers.values()):
                for address, (args, source) in pending.items():
                    if source not in (sub.sender, sub.label):
                        self._send((sub.host, sub.port), address, args)
