"""OSC over UDP: one blocking receive loop on its own thread, so messages keep their order.

Every datagram is decoded by ``oscwire`` (strict, bounded work per byte) and matched by
``oscmatch`` (linear time), never trusted: an undecodable packet, a wrong type, NaN, an
unknown concept... is counted in ``errors``, answered with ``/error s`` to the sender,
logged (rate-limited per kind), and changes nothing.

The socket is bound before the model loads (``serve`` takes a while to start): until
``attach`` hands over the command table, ``/status`` answers ``{"state": "loading"}``
and other messages are held (a bounded number) and run once the server is ready, so
nothing sent during start-up is silently lost.

Bundles with a future timetag (TouchDesigner sends them) are queued and fired by this
same loop when due; the loop never sleeps on them, so ``/status`` still answers at
once. The queue is bounded in time (``MAX_FUTURE_S``), count and bytes; what does not
fit is refused with ``/error``.

Replies are budgeted per destination (count and bytes per second), and one packet gets
at most one ``/status`` reply, so the server cannot be used to amplify traffic.

``/subscribe host port`` adds a feedback destination: target changes go back, at most
``FEEDBACK_HZ`` times a second per address, to every subscriber except the one that
made the change (so a fader being dragged is not yanked back by its own echo). The host
is a numeric address or ``localhost`` (no DNS lookup on the receive thread), by default
the sender's own host, and a subscription lapses after ``SUBSCRIPTION_TTL_S`` unless
it is renewed by sending ``/subscribe`` again.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

from .commands import Commands, Origin
from .control import ControlError, ControlEvent, ControlState
from .oscwire import OscWireError, WireMessage, decode_packet, short
from .ratelog import RateLimitedLog

log = logging.getLogger("steerbridge.osc")

MAX_FUTURE_S = 10.0
MAX_SCHEDULED = 1024  # future-timetag messages waiting at once
MAX_SCHEDULED_BYTES = 256 * 1024
MAX_HELD_WHILE_LOADING = 256
FEEDBACK_HZ = 25.0
MAX_SUBSCRIBERS = 16
SUBSCRIPTION_TTL_S = 60.0
REPLIES_PER_S = 200.0  # per destination; a burst of half a second's worth is allowed
REPLY_BYTES_PER_S = 256 * 1024.0
MAX_REPLY_DESTINATIONS = 1024
_SO_TIMESTAMPNS = 35  # Linux: kernel receive time of each datagram, as a struct timespec


@dataclass(frozen=True)
class Subscriber:
    host: str
    port: int
    sender: str  # the origin label of whoever subscribed: their own moves are not echoed
    expires: float = 0.0  # time.monotonic()

    @property
    def label(self) -> str:
        return f"osc {self.host}:{self.port}"


def encode(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class ReplyBudget:
    """A token bucket per destination, in replies and in bytes per second."""

    def __init__(self, per_s: float = REPLIES_PER_S, bytes_per_s: float = REPLY_BYTES_PER_S) -> None:
        self.per_s, self.bytes_per_s = per_s, bytes_per_s
        self._buckets: dict[tuple[str, int, str], tuple[float, float, float]] = {}  # -> (time, count, bytes)
        self.refused = 0

    def allow(self, dest: tuple[str, int], size: int, now: float, kind: str = "reply") -> bool:
        """Whether a reply of ``size`` bytes may go to ``dest`` now. Each kind has its own
        bucket, so a flood of ``/error`` replies never starves that sender's ``/status``."""
        key = (dest[0], dest[1], kind)
        then, count, nbytes = self._buckets.get(key, (now, self.per_s / 2, self.bytes_per_s / 2))
        elapsed = now - then
        count = min(self.per_s / 2, count + elapsed * self.per_s)
        nbytes = min(self.bytes_per_s / 2, nbytes + elapsed * self.bytes_per_s)
        ok = count >= 1 and nbytes >= size
        if ok:
            count, nbytes = count - 1, nbytes - size
        else:
            self.refused += 1
        if key not in self._buckets and len(self._buckets) >= MAX_REPLY_DESTINATIONS:
            self._buckets.clear()  # a spray of spoofed sources: start over rather than grow
        self._buckets[key] = (now, count, nbytes)
        return ok


def subscriber_host(host: str, sender_host: str, *, any_host: bool) -> str:
    """The numeric address feedback goes to. No DNS: a name other than ``localhost`` is
    refused, because resolving it could stall the receive thread for seconds."""
    if host == "localhost":
        host = "::1" if ":" in sender_host else "127.0.0.1"
    try:
        numeric = ipaddress.ip_address(host)
    except ValueError:
        raise ControlError(f"subscriber host must be a numeric address or localhost, got {short(host, 40)!r}") from None
    if not any_host:
        sender = ipaddress.ip_address(sender_host)
        same = numeric == sender or (numeric.is_loopback and sender.is_loopback)
        if not same:
            raise ControlError(f"feedback goes to your own host ({sender_host}) only; {host} was refused")
    return str(numeric)


class OscServer:
    def __init__(self, commands: Commands | None = None, host: str = "127.0.0.1", port: int = 9000, *,
                 feedback_any_host: bool = False) -> None:
        try:
            self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen for OSC on {host}:{port}: {exc.strerror or exc}") from None
        self._kernel_timestamps = False
        if sys.platform == "linux":
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._kernel_timestamps = True
            except OSError:
                pass
        self.sock.settimeout(0.05)
        self.host, self.port = self.sock.getsockname()[:2]
        self.feedback_any_host = feedback_any_host
        self.packets = 0
        self.dropped_replies = 0
        self.subscribers: dict[tuple[str, int], Subscriber] = {}
        self._subscribers_lock = threading.Lock()  # receive thread adds, feedback thread expires
        self.commands: Commands | None = None
        self.control: ControlState | None = None
        self._scheduled: list[tuple[float, int, WireMessage, Origin]] = []
        self._scheduled_bytes = 0
        self._held: deque[tuple[WireMessage, Origin]] = deque()
        self._held_lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._pending: dict[str, tuple[list[Any], str]] = {}  # feedback address -> (args, origin label)
        self._pending_lock = threading.Lock()
        self._budget = ReplyBudget()
        self.logs = RateLimitedLog(log)
        self._receiver = threading.Thread(target=self._serve, name="osc", daemon=True)
        self._feedbacker = threading.Thread(target=self._feedback, name="osc-feedback", daemon=True)
        if commands is not None:
            self.attach(commands)

    # --- lifecycle ---------------------------------------------------------------------
    def listen(self) -> None:
        """Start receiving (before the model is loaded, if ``attach`` has not happened yet)."""
        if not self._receiver.is_alive():
            self._receiver.start()
            log.info("OSC listening on %s:%d (send /status for the full state)", self.host, self.port)

    def attach(self, commands: Commands) -> None:
        """Hand over the command table; messages held during loading run now, in order."""
        self.commands = commands
        self.control = commands.control
        commands.subscribe = self._subscribe
        self.control.add_listener(self._on_event)

    def start(self) -> None:
        if self.commands is None:
            raise RuntimeError("OscServer.start before attach")
        self.listen()
        if not self._feedbacker.is_alive():
            self._feedbacker.start()

    def stop(self) -> None:
        self._stop.set()
        for t in (self._receiver, self._feedbacker):
            if t.is_alive():
                t.join(timeout=2)
        self.sock.close()
        self.logs.flush()

    # --- receive loop ----------------------------------------------------------------
    def _receive(self) -> tuple[bytes, tuple[str, int], float]:
        """One datagram, its sender, and when it reached the socket (``time.monotonic``)."""
        if not self._kernel_timestamps:
            data, addr = self.sock.recvfrom(65536)
            return data, (addr[0], addr[1]), time.monotonic()
        data, ancdata, _flags, addr = self.sock.recvmsg(65536, 64)
        now_mono, now_wall = time.monotonic(), time.time()
        arrived = now_mono
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= 16:
                seconds, nanos = struct.unpack_from("qq", payload)
                waited = now_wall - (seconds + nanos * 1e-9)
                if 0.0 <= waited < 60.0:  # a wall clock step would make nonsense of it
                    arrived = now_mono - waited
        return data, (addr[0], addr[1]), arrived

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.commands is not None:
                self._run_held()
                self._fire_due()
            timeout = 0.05
            if self._scheduled:
                timeout = min(timeout, max(0.0005, self._scheduled[0][0] - time.time()))
            self.sock.settimeout(timeout)
            try:
                data, addr, arrived = self._receive()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                if self._stop.is_set():
                    break
                continue
            try:
                self._packet(data, addr, arrived)
            except Exception as exc:  # a bug must not take the server down mid-set
                self.logs.log(logging.ERROR, "handler crash", "OSC packet from %s:%d crashed its handler: %r",
                              addr[0], addr[1], exc)
                if self.control is not None:
                    self.control.reject(f"internal error: {exc!r}")

    def _packet(self, data: bytes, addr: tuple[str, int], arrived: float) -> None:
        self.packets += 1
        origin = Origin(f"osc {addr[0]}:{addr[1]}", addr, arrived)
        try:
            messages = decode_packet(data)
        except OscWireError as exc:
            self._reject(origin, "(packet)", f"undecodable OSC packet ({len(data)} bytes): {exc}", "undecodable")
            return
        now = time.time()
        status_answered = False
        for msg in messages:
            if msg.address == "/status":
                if status_answered:  # a bundle of /status must not multiply the reply
                    continue
                status_answered = True
            if msg.timetag is not None and msg.timetag > now + MAX_FUTURE_S:
                self._reject(origin, msg.address, f"bundle timetag is {msg.timetag - now:.0f} s ahead (limit "
                             f"{MAX_FUTURE_S:.0f} s); is the sender's clock right?", "timetag")
            elif msg.timetag is not None and msg.timetag > now + 0.001:
                self._schedule(msg, origin)
            else:
                self._dispatch(msg, origin)

    def _schedule(self, msg: WireMessage, origin: Origin) -> None:
        if len(self._scheduled) >= MAX_SCHEDULED or self._scheduled_bytes + msg.size > MAX_SCHEDULED_BYTES:
            self._reject(origin, msg.address, f"too many future-timetag messages waiting (limit {MAX_SCHEDULED} "
                         f"messages, {MAX_SCHEDULED_BYTES // 1024} KiB)", "future queue full")
            return
        self._scheduled_bytes += msg.size
        heapq.heappush(self._scheduled, (msg.timetag or 0.0, next(self._seq), msg, origin))

    def _fire_due(self) -> None:
        now = time.time()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, msg, origin = heapq.heappop(self._scheduled)
            self._scheduled_bytes -= msg.size
            self._dispatch(msg, origin)

    def _run_held(self) -> None:
        with self._held_lock:
            held, self._held = list(self._held), deque()
        for msg, origin in held:
            self._dispatch(msg, origin)

    def _dispatch(self, msg: WireMessage, origin: Origin) -> None:
        commands = self.commands
        if commands is None:
            self._while_loading(msg, origin)
            return
        try:
            replies = commands.run(msg.address, list(msg.args), origin)
        except ControlError as exc:
            self._reject(origin, msg.address, str(exc), "rejected")
            return
        except OSError as exc:  # e.g. a scene could not be written
            self._reject(origin, msg.address, f"could not complete: {exc}", "could not complete")
            return
        for reply_address, reply_args in replies:
            self._send(origin.address, reply_address, reply_args)

    def _while_loading(self, msg: WireMessage, origin: Origin) -> None:
        if msg.address == "/status":
            self._send(origin.address, "/status/json", [json.dumps({"state": "loading"})])
            return
        with self._held_lock:
            if len(self._held) < MAX_HELD_WHILE_LOADING:
                self._held.append((msg, origin))
                return
        self._reject(origin, msg.address, f"the server is still loading and already holds {MAX_HELD_WHILE_LOADING} "
                     "messages; send again when /status says it is running", "loading")

    def _reject(self, origin: Origin, address: str, reason: str, kind: str) -> None:
        address = short(address)
        if self.control is not None:
            self.control.reject(f"{address}: {reason}")
        self._send(origin.address, "/error", [short(f"{address}: {reason}", 300)], kind="error")
        self.logs.warning(kind, "OSC %s from %s rejected: %s", address, origin.label.removeprefix("osc "), reason)

    def _send(self, addr: tuple[str, int] | None, address: str, args: list[Any], *, budgeted: bool = True,
              kind: str = "reply") -> None:
        if addr is None:
            return
        data = encode(address, args)
        if budgeted and not self._budget.allow(addr, len(data), time.monotonic(), kind):
            self.dropped_replies += 1
            self.logs.warning("reply budget", "OSC %s replies to %s:%d exceed %d/s: some are dropped",
                              kind, addr[0], addr[1], int(REPLIES_PER_S))
            return
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("OSC reply to %s failed: %s", addr, exc)

    # --- feedback ------------------------------------------------------------------------
    def _subscribe(self, host: str, port: int, origin: Origin, on: bool) -> None:
        sender_host = origin.address[0] if origin.address else "127.0.0.1"
        key = (subscriber_host(host, sender_host, any_host=self.feedback_any_host), port)
        with self._subscribers_lock:
            if not on:
                self.subscribers.pop(key, None)
                return
            renewal = key in self.subscribers
            if not renewal and len(self.subscribers) >= MAX_SUBSCRIBERS:
                raise ControlError(f"too many subscribers (limit {MAX_SUBSCRIBERS})")
            self.subscribers[key] = Subscriber(key[0], port, origin.label, time.monotonic() + SUBSCRIPTION_TTL_S)
        if renewal:
            return
        log.info("OSC feedback to %s:%d (renew with /subscribe within %.0f s)", key[0], port, SUBSCRIPTION_TTL_S)
        for address, args in self._full_state():  # bring the new surface up to date at once
            self._send(key, address, args, budgeted=False)

    def _expire_subscribers(self) -> None:
        now = time.monotonic()
        with self._subscribers_lock:
            lapsed = [key for key, sub in self.subscribers.items() if sub.expires <= now]
            gone = [self.subscribers.pop(key) for key in lapsed]
        for sub in gone:
            log.info("OSC feedback to %s:%d lapsed: not renewed within %.0f s", sub.host, sub.port,
                         SUBSCRIPTION_TTL_S)

    def _full_state(self) -> list[tuple[str, list[Any]]]:
        assert self.control is not None
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
        assert self.control is not None
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
            self._expire_subscribers()
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            if not pending or not self.subscribers:
                continue
            for sub in list(self.subscribers.values()):
                for address, (args, source) in pending.items():
                    if source not in (sub.sender, sub.label):
                        self._send((sub.host, sub.port), address, args, budgeted=False)
