"""The OSC front: a separate process that reads every datagram, so that no flood of
packets can take the GIL from the engine.

A fuzz of 5,000 malformed packets a second, parsed on a thread of the server process,
cost hundreds of underruns a minute on a 2-core machine however cheap the parser:
the GIL is shared. So the server binds the UDP socket and hands it to this process,
which needs nothing heavy (no torch) and does all the per-packet work:

- decode (``oscwire``: strict and bounded), match the address against the control
  table (``targets``, with ``oscmatch``: linear time), parse and validate the arguments
  for every target it names (arity, types, ranges), refuse what fails with ``/error``
  (budgeted per sender);
- keep future-timetag bundles until they are due (bounded in time, count and bytes);
- answer ``/status`` with ``{"state": "loading"}`` until the server sends its
  table, holding other messages (bounded) until then;
- pass each message that survives to the server, parsed, over a local SEQPACKET
  socket, at most ``FORWARD_PER_S`` a second per sender, stamped with the time the
  kernel received it. The server runs it as it comes: it decodes and validates nothing.

The server answers on the same UDP socket (``/status``, and ``/error`` for what only
it can refuse: a scene that is not on disk, MIDI learn without a MIDI input).
Records on the local socket, one per SEQPACKET datagram:

- counts: ``>QQQH`` (packets so far, errors since the last counts, replies dropped so
  far, length of the last error's text) + that text;
- front -> server ``C`` + counts (on a timer, while errors come and no message goes);
- front -> server ``M`` + counts + ``>dHB`` (arrival, ``time.monotonic`` in this
  machine's shared clock; sender port; host length) + host + the parsed message as
  JSON ``[address as sent, [[target address, [parsed arguments]], ...]]``. Counts ride
  with each message, so they are in order with messages at the cost of one local send
  per message;
- server -> front ``T`` + JSON ``ControlTable.spec()`` (the concepts with their ranges,
  the vocabulary size): the front builds the same table from it.

The process ends when the server closes its end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .oscbudget import ALL, SenderBudgets, TokenBuckets
from .oscmatch import AddressMatcher, PatternError
from .oscqueue import FutureQueue, QueueFull
from .oscwire import OscWireError, WireMessage, decode_packet, encode_message, is_own_address, short
from .rate_limited_log import LOG_DATE_FORMAT, RateLimitedLog, log_format
from .stem_table import table_from_spec
from .targets import Args, ControlError, ControlTable, Target

log = logging.getLogger("steerbridge.osc")

MAX_FUTURE_S = 10.0
MAX_SCHEDULED = 1024  # future-timetag messages waiting at once
MAX_SCHEDULED_BYTES = 256 * 1024
MAX_HELD_WHILE_LOADING = 256
FRONT_NICENESS = 10  # below the engine: see main()
ERROR_REPLIES_PER_S = 100.0
ERROR_REPLY_BYTES_PER_S = 64 * 1024.0
ERROR_REPLIES_TOTAL_PER_S = 500.0  # all destinations together: refusing a flood must not cost a flood of replies
#: What the server itself sends: receiving one means a loop (or a peer answering us), so it is
#: counted and never answered, above all never an /error with an /error.
REPLY_ADDRESSES = frozenset({"/error", "/status/json", "/midi/saved"})
COUNTS_EVERY_S = 0.02
READ_BATCH = 256  # datagrams read per wake-up before looking at the clock again
_SO_TIMESTAMPNS = 35  # Linux: kernel receive time of each datagram, as a struct timespec

RECORD_MESSAGE = b"M"
RECORD_COUNTS = b"C"
RECORD_TABLE = b"T"
_MESSAGE_HEAD = struct.Struct(">dHB")
_COUNTS_HEAD = struct.Struct(">QQQH")
_STATUS = AddressMatcher(["/status"])
_PATTERN_CHARS = re.compile(rb"[?*\[\]{}]")
_LITERAL_STATUS = b"/status\0"
_NOT_BUDGETED_FIRST = frozenset({b"/status", *(a.encode() for a in REPLY_ADDRESSES)})


def names_status(address: str) -> bool:
    """Whether ``address`` (a pattern, maybe: ``/s?atus``) names ``/status``, as the table matches it."""
    try:
        return bool(_STATUS.match(address))
    except PatternError:
        return False


def pack_counts(packets: int, errors: int, dropped: int, last_error: str) -> bytes:
    text = last_error.encode("utf-8")[:1024] if errors else b""
    return _COUNTS_HEAD.pack(packets, errors, dropped, len(text)) + text


def unpack_counts(record: bytes, offset: int) -> tuple[int, int, int, str, int]:
    """(packets, errors, dropped, last error, offset after the counts)."""
    packets, errors, dropped, length = _COUNTS_HEAD.unpack_from(record, offset)
    start = offset + _COUNTS_HEAD.size
    return packets, errors, dropped, record[start:start + length].decode("utf-8", "replace"), start + length


@dataclass(frozen=True)
class ParsedMessage:
    """A message as the front passes it on: the address as sent (a pattern, maybe) and,
    for each target it names, that target's address and its parsed arguments."""

    address: str
    calls: tuple[tuple[str, Args], ...]


def pack_message(arrived: float, sender: tuple[str, int], address: str, calls: Sequence[tuple[Target, Args]]) -> bytes:
    host = sender[0].encode("ascii")
    body = json.dumps([address, [[target.address, list(args)] for target, args in calls]]).encode()
    return _MESSAGE_HEAD.pack(arrived, sender[1], len(host)) + host + body


def unpack_message(record: bytes, offset: int) -> tuple[float, tuple[str, int], ParsedMessage]:
    arrived, port, host_len = _MESSAGE_HEAD.unpack_from(record, offset)
    start = offset + _MESSAGE_HEAD.size
    address, calls = json.loads(record[start + host_len:])
    parsed = ParsedMessage(address, tuple((target, tuple(args)) for target, args in calls))
    return arrived, (record[start:start + host_len].decode("ascii"), port), parsed


def enable_kernel_timestamps(sock: socket.socket) -> bool:
    if sys.platform != "linux":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def receive(sock: socket.socket) -> tuple[bytes, tuple[str, int], float]:
    """One datagram, its sender, and when the kernel received it, as ``time.monotonic()``
    (the receive time in the socket, so time spent queued there counts as latency)."""
    data, ancdata, _flags, addr = sock.recvmsg(65536, 64)
    now_mono, now_wall = time.monotonic(), time.time()
    arrived = now_mono
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= 16:
            seconds, nanos = struct.unpack_from("qq", payload)
            waited = now_wall - (seconds + nanos * 1e-9)
            if 0.0 <= waited < 60.0:  # a wall-clock step would make nonsense of it
                arrived = now_mono - waited
    return data, (addr[0], addr[1]), arrived


class Front:
    """The front's state and loop. Single-threaded: everything here runs on one thread."""

    def __init__(self, sock: socket.socket, link: socket.socket) -> None:
        self.sock, self.link = sock, link
        self.sock.setblocking(False)
        self.link.setblocking(False)
        enable_kernel_timestamps(sock)
        self.table: ControlTable | None = None  # None while the server loads
        self.packets = 0
        self.dropped_replies = 0
        self._errors = 0  # since the last counts record
        # The last refusal's address and reason: formatted only when it is sent, so that a
        # flood of refusals formats nothing.
        self._last_error_parts = ("", "")
        self._counts_sent_at = 0.0
        self._counts_dirty = False
        self.scheduled = FutureQueue(MAX_SCHEDULED, MAX_SCHEDULED_BYTES)
        self.held: deque[tuple[WireMessage, tuple[str, int], float]] = deque()
        self.own = sock.getsockname()[:2]
        self.budgets = SenderBudgets()
        self._replies = TokenBuckets(ERROR_REPLIES_PER_S, ERROR_REPLY_BYTES_PER_S)
        self._replies_all = TokenBuckets(ERROR_REPLIES_TOTAL_PER_S)
        self.logs = RateLimitedLog(log)
        self.closed = False

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "udp")
        selector.register(self.link, selectors.EVENT_READ, "link")
        while not self.closed:
            timeout = COUNTS_EVERY_S if self._counts_dirty else 0.5
            due = self.scheduled.next_due()
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
            ready = {key.data for key, _ in selector.select(timeout)}
            if "link" in ready:  # first: the address table must be in place before the packets it decides
                self.read_link()
            if "udp" in ready and not self.closed:
                self.read_udp()
            self.fire_due()
            self.flush_counts()
        selector.close()
        self.logs.flush()

    def read_link(self) -> None:
        while True:
            try:
                record = self.link.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                record = b""
            if not record:
                self.closed = True
                return
            if record[:1] == RECORD_TABLE:
                self.table = table_from_spec(json.loads(record[1:]))
                held, self.held = list(self.held), deque()
                for msg, sender, arrived in held:
                    self.route(msg, sender, arrived)

    def read_udp(self) -> None:
        for _ in range(READ_BATCH):
            try:
                data, sender, arrived = receive(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.packet(data, sender, arrived)

    # --- per packet ----------------------------------------------------------------------
    @property
    def scheduled_bytes(self) -> int:
        return self.scheduled.nbytes

    def packet(self, data: bytes, sender: tuple[str, int], arrived: float) -> None:
        self.packets += 1
        self._counts_dirty = True
        if is_own_address(sender, self.own):  # a forged source: answering it would be talking to ourselves
            self.reject(sender, "(packet)", "a packet from the server's own address", "own address")
            return
        address = self.literal_command(data) if self.table is not None else None
        budgeted = address is not None
        # Budgets charged before the decoding, so that a flood past them costs little here.
        if address is not None:
            refused = self.budgets.message(sender, False)
            if refused is not None:
                self.reject(sender, address.decode("ascii", "replace"), refused, "too fast")
                return
        elif not data.startswith(_LITERAL_STATUS):
            refused = self.budgets.decoded(sender)
            if refused is not None:
                self.reject(sender, "(packet)", refused, "too fast")
                return
        try:
            messages = decode_packet(data)
        except OscWireError as exc:
            self.reject(sender, "(packet)", f"undecodable OSC packet ({len(data)} bytes): {exc}", "undecodable")
            return
        now = time.time()
        status_answered = False
        for msg in messages:
            if names_status(msg.address):
                if status_answered:  # a bundle of /status must not multiply the reply
                    continue
                status_answered = True
            if msg.timetag is not None and msg.timetag > now + MAX_FUTURE_S:
                self.reject(sender, msg.address, f"bundle timetag is {msg.timetag - now:.0f} s ahead (limit "
                            f"{MAX_FUTURE_S:.0f} s); is the sender's clock right?", "timetag")
            elif msg.timetag is not None and msg.timetag > now + 0.001:
                self.schedule(msg, sender, arrived)
            else:
                self.route(msg, sender, arrived, budgeted=budgeted)

    @staticmethod
    def literal_command(data: bytes) -> bytes | None:
        """The address of a plain message whose address is literal and is not /status or a
        reply address: its budget can be charged before it is decoded (what else it is,
        decoding tells). None for anything else."""
        end = data.find(b"\0")
        if end < 1 or data[0] != 0x2F:  # "/"
            return None
        address = data[:end]
        if address in _NOT_BUDGETED_FIRST or _PATTERN_CHARS.search(address):
            return None
        return address

    def schedule(self, msg: WireMessage, sender: tuple[str, int], arrived: float) -> None:
        try:
            dropped = self.scheduled.add(msg, sender, arrived)
        except QueueFull:
            self.reject(sender, msg.address, f"too many future-timetag messages waiting (limit {MAX_SCHEDULED} "
                        f"messages, {MAX_SCHEDULED_BYTES // 1024} KiB)", "future queue full")
            return
        for entry in dropped:
            self.reject(entry.sender, entry.msg.address, "future-timetag message dropped: the queue is full and "
                        "you hold the largest share of it", "future queue share")

    def fire_due(self) -> None:
        for entry in self.scheduled.pop_due(time.time()):
            self.route(entry.msg, entry.sender, time.monotonic())  # latency counts from when it was due

    def route(self, msg: WireMessage, sender: tuple[str, int], arrived: float, *, budgeted: bool = False) -> None:
        """Pass ``msg`` on to the server, or refuse it; ``budgeted``: its budget was charged already."""
        if msg.address in REPLY_ADDRESSES:
            self.reject(sender, msg.address, "a reply address, not a command (a feedback loop?): not answered",
                        "reply received", answer=False)
            return
        if self.table is None:
            if names_status(msg.address):
                self.reply(sender, "/status/json", lambda: [json.dumps({"state": "loading"})], "status")
            elif len(self.held) < MAX_HELD_WHILE_LOADING:
                self.held.append((msg, sender, arrived))
            else:
                self.reject(sender, msg.address, f"the server is still loading and already holds "
                            f"{MAX_HELD_WHILE_LOADING} messages; send again when /status says it is running", "loading")
            return
        # Charged before the parse: a pattern's match walks the table, and a flood past its
        # budget must not pay for that. A pattern naming /status counts as /status.
        refused = None if budgeted else self.budgets.message(sender, names_status(msg.address))
        if refused is not None:
            self.reject(sender, msg.address, refused, "too fast")
            return
        try:
            calls = self.table.parse(msg.address, msg.args)
        except ControlError as exc:
            self.reject(sender, msg.address, str(exc), "rejected")
            return
        record = (RECORD_MESSAGE + pack_counts(self.packets, self._errors, self.dropped_replies,
                                                 self.last_error if self._errors else "")
                  + pack_message(arrived, sender, msg.address, calls))
        try:
            self.link.send(record)
        except BlockingIOError:
            self.reject(sender, msg.address, "the server is busy; message dropped", "busy")
            return
        except OSError:
            self.closed = True
            return
        self._errors, self._counts_dirty, self._counts_sent_at = 0, False, time.monotonic()

    # --- out -----------------------------------------------------------------------------
    @property
    def last_error(self) -> str:
        """The last refusal, as ``/error`` and the server's status give it."""
        address, reason = self._last_error_parts
        return short(f"{short(address)}: {reason}", 300) if address or reason else ""

    def reject(self, sender: tuple[str, int], address: str, reason: str, kind: str, *, answer: bool = True) -> None:
        self._errors += 1
        self._last_error_parts = (address, reason)
        self._counts_dirty = True
        if answer:
            self.reply(sender, "/error", lambda: [self.last_error], "error")
        self.logs.warning(kind, "OSC %s from %s:%d rejected: %s", short(address), sender[0], sender[1], reason)

    def reply(self, dest: tuple[str, int], address: str, args: Callable[[], list[object]], kind: str) -> None:
        """Send ``address`` with ``args()`` to ``dest``, within the reply budgets; the
        arguments are only worked out for a reply that goes."""
        if is_own_address(dest, self.own):
            return
        now = time.monotonic()
        # The overall count first: under a flood it is spent, and then a reply costs no encoding.
        data = encode_message(address, args()) if self._replies_all.allow(ALL, now) else None
        if data is None or not self._replies.allow((dest, kind), now, len(data)):
            self.dropped_replies += 1
            self._counts_dirty = True
            self.logs.warning("reply budget", "OSC %s replies to %s:%d over %d/s: some are dropped", kind,
                              dest[0], dest[1], int(ERROR_REPLIES_PER_S))
            return
        with contextlib.suppress(OSError):  # a full buffer or an unreachable sender: replies are best-effort
            self.sock.sendto(data, dest)

    def flush_counts(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._counts_dirty or (not force and now - self._counts_sent_at < COUNTS_EVERY_S):
            return
        record = RECORD_COUNTS + pack_counts(self.packets, self._errors, self.dropped_replies,
                                                 self.last_error if self._errors else "")
        try:
            self.link.send(record)
        except BlockingIOError:
            return  # try again on the next turn; the counts are cumulative where it matters
        except OSError:
            self.closed = True
            return
        self._errors, self._counts_dirty, self._counts_sent_at = 0, False, now


def main(argv: list[str]) -> int:
    udp_fd, link_fd, level = int(argv[0]), int(argv[1]), argv[2]
    logging.basicConfig(level=level, format=log_format(), datefmt=LOG_DATE_FORMAT)
    # Ctrl-C reaches the whole process group: the server decides, and closes the link.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The music comes first: under a flood this process, not the engine, waits for a core,
    # and the kernel drops what it cannot read. At equal priority a flood cost the engine
    # underruns. Beside other busy processes +10 leaves the front so little of a core that
    # /status waits; +5 answered it sooner there but cost the engine more underruns under a
    # fuzz (benchmarks/RESULTS.md, 2026-12-03), and the sound is what must not stop. Same
    # session as the server, so it holds under the kernel's autogroup scheduling too.
    with contextlib.suppress(OSError):
        os.nice(FRONT_NICENESS)
    sock = socket.socket(fileno=udp_fd)
    link = socket.socket(fileno=link_fd)
    Front(sock, link).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
