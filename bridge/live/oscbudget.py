"""Token buckets: how many replies (and bytes) a destination may get, how many messages
a sender may pass on; and the OSC front's budgets made of them (``SenderBudgets``).
``TokenBuckets`` is pure arithmetic on a clock you pass in, so it tests exactly.

``allow`` runs for every packet of a flood (three times: the sender's, its host's and the
overall budget), so it is kept to a handful of operations: the bucket is a list updated
in place, and the full bucket is worked out once."""

from __future__ import annotations

import time

MAX_KEYS = 1024
ALL = "all"  # the one key of an overall budget

FORWARD_PER_S = 500.0  # messages per sender per second passed to the server (16 faders at 30 Hz fit)
# Many sockets (or one rotating its source port) get past a per-sender budget: a host's
# senders together, and all senders together, have their own. /status is outside these
# (it has its own budgets), so a flood of knob messages cannot silence it.
FORWARD_PER_HOST_S = 1000.0
FORWARD_TOTAL_PER_S = 2000.0
STATUS_PER_S = 100.0  # /status per sender per second: each one costs the server a full snapshot (polls at 50 Hz fit)
STATUS_TOTAL_PER_S = 400.0
# What the address alone cannot tell (bundles, patterns, garbage) is decoded before any
# budget knows what it holds, and decoding a bundle of patterns costs the front far more
# than a knob message: so such packets have a budget of their own, per sender and per host,
# charged before the decoding. A plain literal /status is outside it (its own budgets).
DECODED_PER_S = 500.0
DECODED_PER_HOST_S = 1000.0

# Why a message is refused: worked out once, since under a flood it is said for every packet.
SENDER_TOO_FAST = f"more than {FORWARD_PER_S:.0f} messages a second from one sender"
ALL_TOO_FAST = f"more than {FORWARD_TOTAL_PER_S:.0f} messages a second from all senders"
STATUS_SENDER_TOO_FAST = f"more than {STATUS_PER_S:.0f} /status a second from one sender"
STATUS_ALL_TOO_FAST = f"more than {STATUS_TOTAL_PER_S:.0f} /status a second from all senders"
SENDER_DECODED_TOO_FAST = f"more than {DECODED_PER_S:.0f} bundles or address patterns a second from one sender"


class TokenBuckets:
    """Per key, at most ``per_s`` events and ``bytes_per_s`` bytes a second, with a burst of
    ``burst_s`` seconds' worth. Not thread-safe: one owner thread."""

    def __init__(self, per_s: float, bytes_per_s: float = float("inf"), burst_s: float = 0.5) -> None:
        self.per_s, self.bytes_per_s, self.burst_s = per_s, bytes_per_s, burst_s
        self._full_count, self._full_bytes = per_s * burst_s, bytes_per_s * burst_s
        self._buckets: dict[object, list[float]] = {}  # key -> [time, events, bytes]
        self.refused = 0

    def allow(self, key: object, now: float, size: int = 0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._buckets.clear()  # a spray of spoofed sources: start over rather than grow
            bucket = self._buckets[key] = [now, self._full_count, self._full_bytes]
        elapsed = now - bucket[0]
        if elapsed > 0.0:
            bucket[0] = now
            bucket[1] = min(self._full_count, bucket[1] + elapsed * self.per_s)
            bucket[2] = min(self._full_bytes, bucket[2] + elapsed * self.bytes_per_s)
        if bucket[1] >= 1.0 and bucket[2] >= size:
            bucket[1] -= 1.0
            bucket[2] -= size
            return True
        self.refused += 1
        return False


class SenderBudgets:
    """What the OSC front lets through from whom (``oscfront``): each check answers why a
    packet or message may not pass now, or None. Not thread-safe: the front's one thread."""

    def __init__(self) -> None:
        self._forward = TokenBuckets(FORWARD_PER_S)
        self._forward_host = TokenBuckets(FORWARD_PER_HOST_S)
        self._forward_all = TokenBuckets(FORWARD_TOTAL_PER_S)
        self._status = TokenBuckets(STATUS_PER_S)
        self._status_all = TokenBuckets(STATUS_TOTAL_PER_S)
        self._decoded = TokenBuckets(DECODED_PER_S)
        self._decoded_host = TokenBuckets(DECODED_PER_HOST_S)

    def message(self, sender: tuple[str, int], status: bool) -> str | None:
        """A message to pass on: /status has budgets of its own; everything else, the
        sender's, its host's and the overall one."""
        now = time.monotonic()
        if status:
            if not self._status.allow(sender, now):
                return STATUS_SENDER_TOO_FAST
            if not self._status_all.allow(ALL, now):
                return STATUS_ALL_TOO_FAST
            return None
        if not self._forward.allow(sender, now):
            return SENDER_TOO_FAST
        if not self._forward_host.allow(sender[0], now):
            return f"more than {FORWARD_PER_HOST_S:.0f} messages a second from host {sender[0]}"
        if not self._forward_all.allow(ALL, now):
            return ALL_TOO_FAST
        return None

    def decoded(self, sender: tuple[str, int]) -> str | None:
        """A packet that must be decoded to be known (a bundle, a pattern, garbage)."""
        now = time.monotonic()
        if not self._decoded.allow(sender, now):
            return SENDER_DECODED_TOO_FAST
        if not self._decoded_host.allow(sender[0], now):
            return f"more than {DECODED_PER_HOST_S:.0f} bundles or address patterns a second from host {sender[0]}"
        return None
