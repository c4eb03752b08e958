"""OSC over UDP: the socket, the commands and feedback, in the server process.

The per-packet work happens in another process, ``oscfront`` (see there why): it reads
and decodes every datagram, parses and validates each message against the control
table (``targets.py``), refuses what is malformed, unknown, out of range, too far in
the future or too fast with ``/error``, and passes the rest here, parsed, in order,
over a local socket. Here each parsed message is run by the commands as it comes
(nothing is decoded or validated again); what only the server can refuse (a scene
that is not on disk, a MIDI learn without MIDI) is counted in ``errors``, answered
with ``/error s`` on the same UDP socket, and changes nothing.

The socket is bound, and the front started, before the model loads (``serve`` takes a
while to start): until ``attach`` hands over the command table, the front answers
``/status`` with ``{"state": "loading"}`` and holds other messages, which run once the
server is ready, so nothing sent during start-up is silently lost.

If the front process dies (a bug, or someone's ``kill``), the ``osc`` thread starts a
new one on the same socket, after a back-off that doubles with each restart in a row
(``FRONT_RESTART_S`` up to ``FRONT_RESTART_MAX_S``), logs one line per restart and counts
them (``front_restarts``, in ``/status/json`` under ``osc``).

Replies are budgeted per destination (count and bytes per second; ``/error`` and other
replies separately), so the server cannot be used to amplify traffic.

``/subscribe host port`` adds a feedback destination: target changes go back, at most
``FEEDBACK_HZ`` times a second per address, to every subscriber except the one that
made the change (so a fader being dragged is not yanked back by its own echo). The host
is a numeric address or ``localhost`` (no DNS lookup on the receive thread), by default
the sender's own host, never the server's own address and port (its feedback would come
back as commands), and a subscription lapses after ``SUBSCRIPTION_TTL_S`` unless
it is renewed by sending ``/subscribe`` again.

Threads: ``osc`` reads the front's records and runs commands; ``osc-feedback`` sends
feedback and expires subscriptions. The subscribers are guarded by their lock (the
``subscribers`` property is a copy taken under it, for any thread); the reply budget
belongs to ``osc`` alone (feedback is throttled by its own period instead).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .commands import Commands, Origin
from .control import ControlError, ControlEvent, ControlState
from .oscbudget import TokenBuckets
from .oscfront import RECORD_COUNTS, RECORD_MESSAGE, RECORD_TABLE, ParsedMessage, unpack_counts, unpack_message
from .oscwire import encode_message, is_own_address, short
from .rate_limited_log import RateLimitedLog
from .targets import ControlTable, feedback_value

log = logging.getLogger("steerbridge.osc")

FEEDBACK_HZ = 25.0
MAX_SUBSCRIBERS = 16
SUBSCRIPTION_TTL_S = 60.0
REPLIES_PER_S = 200.0  # per destination and kind of reply; a burst of half a second's worth is allowed
REPLY_BYTES_PER_S = 256 * 1024.0
# The datagrams waiting for the front. Under a flood the buffer stays full and a /status
# waits behind all of it, so its size is a latency: what the front takes to drain it. The
# front refuses a flood's packets cheaply (``oscbudget``), so this much drains quickly, and
# it is room for a few of the largest datagrams beside small ones: with less, a fuzz of
# 60 KB packets filled it whenever the front waited for a core, and the kernel dropped the
# /status behind them. The kernel caps it at net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 1024 * 1024
FRONT_RESTART_S = 0.2  # the first restart's back-off; it doubles with each restart in a row
FRONT_RESTART_MAX_S = 10.0
FRONT_STABLE_S = 30.0  # a front that lived this long resets the back-off


@dataclass(frozen=True)
class Subscriber:
    host: str
    port: int
    sender: str  # the origin label of whoever subscribed: their own moves are not echoed
    expires: float = 0.0  # time.monotonic()

    @property
    def label(self) -> str:
        return f"osc {self.host}:{self.port}"


def _link_pair() -> tuple[socket.socket, socket.socket]:
    """The local socket to a front: (our end, its end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return ours, theirs


def encode(address: str, args: list[Any]) -> bytes:
    return encode_message(address, args)


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
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError as exc:
            raise OSError(f"cannot listen for OSC on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = self.sock.getsockname()[:2]
        self.link, self._front_link = _link_pair()
        self._link_lock = threading.Lock()  # osc replaces the link on a restart; attach and stop use it
        self._table_record: bytes | None = None  # sent to each new front
        self.front: subprocess.Popen[bytes] | None = None
        self.front_started = 0.0
        self.front_restarts = 0
        self._restart_s = FRONT_RESTART_S
        self.feedback_any_host = feedback_any_host
        self.packets = 0
        self.dropped_replies = 0
        self._front_dropped = 0
        self._subscribers: dict[tuple[str, int], Subscriber] = {}
        self._subscribers_lock = threading.Lock()  # osc adds, osc-feedback expires
        self.commands: Commands | None = None
        self.control: ControlState | None = None
        self._stop = threading.Event()
        # What moved since the last feedback, and who moved it: (change kind, concept) -> origin
        # label, and the transport. Values are read once per feedback period, not per event.
        self._pending: dict[tuple[str, str | None, int | None], str] = {}
        self._pending_transport: tuple[str, str] | None = None  # (play | stop, origin label)
        self._pending_lock = threading.Lock()
        self._budget = TokenBuckets(REPLIES_PER_S, REPLY_BYTES_PER_S)
        self.logs = RateLimitedLog(log)
        self._receiver = threading.Thread(target=self._serve, name="osc", daemon=True)
        self._feedbacker = threading.Thread(target=self._feedback, name="osc-feedback", daemon=True)
        if commands is not None:
            self.attach(commands)

    # --- lifecycle ---------------------------------------------------------------------
    def listen(self) -> None:
        """Start the front (before the model is loaded, if ``attach`` has not happened yet)."""
        if self.front is not None:
            return
        self._start_front()
        self._receiver.start()
        log.info("OSC listening on %s:%d (send /status for the full state)", self.host, self.port)

    def _start_front(self) -> None:
        fds = (self.sock.fileno(), self._front_link.fileno())
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.front = subprocess.Popen([sys.executable, "-m", "bridge.live.oscfront", str(fds[0]), str(fds[1]), level],
                                      pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        self.front_started = time.monotonic()
        self._front_link.close()  # the front holds its end now; its exit is our end-of-file

    def _restart_front(self) -> bool:
        """After the front ended: wait the back-off, start a new one and hand it the table.
        False if the server stopped meanwhile."""
        assert self.front is not None
        try:
            self.front.wait(timeout=1)
        except subprocess.TimeoutExpired:  # it closed the link yet lives on: two readers of one socket would race
            self.front.kill()
            self.front.wait()
        if time.monotonic() - self.front_started >= FRONT_STABLE_S:
            self._restart_s = FRONT_RESTART_S
        delay, self._restart_s = self._restart_s, min(FRONT_RESTART_MAX_S, 2 * self._restart_s)
        self.front_restarts += 1
        log.error("the OSC front process ended (exit code %s): restarting it in %.1f s (restart %d)",
                  self.front.poll(), delay, self.front_restarts)
        if self._stop.wait(delay):
            return False
        with self._link_lock:
            if self._stop.is_set():
                return False
            self.link.close()
            self.link, self._front_link = _link_pair()
            self._start_front()
            if self._table_record is not None:
                self.link.send(self._table_record)
        return True

    def attach(self, commands: Commands) -> None:
        """Hand over the command table; the front then passes on what it held during loading."""
        self.commands = commands
        self.control = commands.control
        commands.subscribe = self._subscribe
        self.control.add_listener(self._on_event)
        with self._link_lock:
            self._table_record = RECORD_TABLE + json.dumps(commands.table.spec()).encode()
            self.link.send(self._table_record)

    def send_table(self, table: ControlTable) -> None:
        """A new table (a stem came or went): the front matches against it from now on."""
        with self._link_lock:
            self._table_record = RECORD_TABLE + json.dumps(table.spec()).encode()
            self.link.send(self._table_record)

    def start(self) -> None:
        if self.commands is None:
            raise RuntimeError("OscServer.start before attach")
        self.listen()
        if not self._feedbacker.is_alive():
            self._feedbacker.start()

    def stop(self) -> None:
        self._stop.set()
        with self._link_lock, contextlib.suppress(OSError):
            self.link.shutdown(socket.SHUT_RDWR)  # the front sees end-of-file and exits
        if self.front is not None:
            try:
                self.front.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.front.kill()
                self.front.wait()
        for t in (self._receiver, self._feedbacker):
            if t.is_alive():
                t.join(timeout=2)
        self._front_link.close()  # still ours if the front never started
        self.link.close()
        self.sock.close()
        self.logs.flush()

    # --- from the front ---------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            link = self.link
            link.settimeout(0.1)
            try:
                record = link.recv(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                record = b""
            if not record:
                if self._stop.is_set() or not self._restart_front():
                    break
                continue
            try:
                self._record(record)
            except Exception as exc:  # a bug must not take the server down mid-set, but it shows as one
                self.logs.log(logging.ERROR, "handler crash", "OSC record crashed its handler (a bug): %r", exc,
                              exc_info=True)
                if self.control is not None:
                    self.control.reject(f"internal error: {exc!r}")

    def _record(self, record: bytes) -> None:
        kind = record[:1]
        if kind not in (RECORD_COUNTS, RECORD_MESSAGE):
            raise RuntimeError(f"unknown record {kind!r} from the OSC front")
        packets, errors, dropped, last_error, offset = unpack_counts(record, 1)
        self.packets, self._front_dropped = packets, dropped
        if errors and self.control is not None:
            self.control.reject(last_error, count=errors)
        if kind == RECORD_MESSAGE:
            arrived, sender, parsed = unpack_message(record, offset)
            self._dispatch(parsed, Origin(f"osc {sender[0]}:{sender[1]}", sender, arrived))

    def _dispatch(self, parsed: ParsedMessage, origin: Origin) -> None:
        commands = self.commands
        if commands is None:
            raise RuntimeError("the OSC front passed on a message before attach")
        address = parsed.address
        try:  # a target the front named that the table lacks is a bug: KeyError, logged with its traceback
            table = commands.table
            if any(t.startswith("/stem/") and table.get(t) is None for t, _ in parsed.calls):  # parsed before a remove
                raise ControlError("that stem has just been removed")
            calls = [(table[target], args) for target, args in parsed.calls]
            replies = commands.execute(address, calls, origin)
        except ControlError as exc:
            self._reject(origin, address, str(exc), "rejected")
            return
        except OSError as exc:  # e.g. a scene could not be written
            self._reject(origin, address, f"could not complete: {exc}", "could not complete")
            return
        for reply_address, reply_args in replies:
            self._send(origin.address, reply_address, reply_args)

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
        if budgeted and not self._budget.allow((addr, kind), time.monotonic(), len(data)):
            self.dropped_replies += 1
            self.logs.warning("reply budget", "OSC %s replies to %s:%d exceed %d/s: some are dropped",
                              kind, addr[0], addr[1], int(REPLIES_PER_S))
            return
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("OSC reply to %s failed: %s", addr, exc)

    @property
    def replies_dropped(self) -> int:
        """Replies refused by either budget (the front's for its /error, ours for the rest)."""
        return self.dropped_replies + self._front_dropped

    # --- feedback ------------------------------------------------------------------------
    @property
    def subscribers(self) -> dict[tuple[str, int], Subscriber]:
        """The feedback destinations now: a copy, taken under their lock."""
        with self._subscribers_lock:
            return dict(self._subscribers)

    def _subscribe(self, host: str, port: int, origin: Origin, on: bool) -> None:
        sender_host = origin.address[0] if origin.address else "127.0.0.1"
        if is_own_address((host, port), (self.host, self.port)):
            raise ControlError(f"{short(host, 40)}:{port} is this server's own OSC port: its feedback would come "
                               "back as commands")
        key = (subscriber_host(host, sender_host, any_host=self.feedback_any_host), port)
        with self._subscribers_lock:
            if not on:
                self._subscribers.pop(key, None)
                return
            renewal = key in self._subscribers
            if not renewal and len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise ControlError(f"too many subscribers (limit {MAX_SUBSCRIBERS})")
            self._subscribers[key] = Subscriber(key[0], port, origin.label, time.monotonic() + SUBSCRIPTION_TTL_S)
        if renewal:
            return
        log.info("OSC feedback to %s:%d (renew with /subscribe within %.0f s)", key[0], port, SUBSCRIPTION_TTL_S)
        for address, args in self._full_state():  # bring the new surface up to date at once
            self._send(key, address, args, budgeted=False)

    def _expire_subscribers(self) -> None:
        now = time.monotonic()
        with self._subscribers_lock:
            lapsed = [key for key, sub in self._subscribers.items() if sub.expires <= now]
            gone = [self._subscribers.pop(key) for key in lapsed]
        for sub in gone:
            log.info("OSC feedback to %s:%d lapsed: not renewed within %.0f s", sub.host, sub.port,
                         SUBSCRIPTION_TTL_S)

    def _full_state(self) -> list[tuple[str, list[Any]]]:
        """Every target's asked value on its feedback address (a new subscriber's first view)."""
        assert self.commands is not None
        asked = self.commands.control.asked()
        out: list[tuple[str, list[Any]]] = []
        for target in self.commands.table:
            value = target.read(asked)
            if target.feedback is not None and value is not None:
                out.append((target.feedback, [feedback_value(value)]))
        return out

    def _on_event(self, event: ControlEvent) -> None:
        """On the thread that submitted: note what moved (a flood of knob moves costs a dict
        write each; the values are read at the next feedback period)."""
        with self._pending_lock:
            for change in event.changes:  # newest wins (and goes last, after a panic it follows): the throttle
                key = (change.kind, change.concept, change.stream)
                self._pending.pop(key, None)
                self._pending[key] = event.source
            if event.transport:
                self._pending_transport = (event.transport, event.source)

    def _pending_updates(self) -> dict[str, tuple[list[Any], str]]:
        """Feedback address -> (its value now, who moved it), for what moved since the last period."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            transport, self._pending_transport = self._pending_transport, None
        assert self.commands is not None
        table = self.commands.table
        asked = self.commands.control.asked() if pending else None
        updates: dict[str, tuple[list[Any], str]] = {}
        for (kind, concept, stream), source in pending.items():
            for target in table.touched(kind, concept, stream):
                value = target.read(asked) if asked is not None else None
                if target.feedback is not None and value is not None:
                    updates[target.feedback] = ([feedback_value(value)], source)
        if transport is not None:
            feedback = table[f"/transport/{transport[0]}"].feedback
            if feedback is not None:
                updates[feedback] = ([int(transport[0] == "play")], transport[1])
        return updates

    def _feedback(self) -> None:
        period = 1.0 / FEEDBACK_HZ
        while not self._stop.wait(period):
            self._expire_subscribers()
            pending = self._pending_updates()
            subscribers = self.subscribers
            if not pending or not subscribers:
                continue
            for sub in subscribers.values():
                for address, (args, source) in pending.items():
                    if source not in (sub.sender, sub.label):
                        self._send((sub.host, sub.port), address, args, budgeted=False)
