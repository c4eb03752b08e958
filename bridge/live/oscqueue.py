"""The OSC front's queue of future-timetag messages, shared fairly between senders.

The queue is bounded (messages and bytes). One sender may use all of it while nobody
else needs it; when it is full and another sender's message comes, room is made by
dropping the latest-due message of the sender that holds the largest share (if that
share is larger than the newcomer's would be), so a sender scheduling far ahead
cannot lock the others out: each is guaranteed an equal part. What is dropped is
returned, so the front can tell its sender. Single-threaded, like the front.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from steering_core.errors import UserError

from .oscwire import WireMessage

Sender = tuple[str, int]


@dataclass
class Scheduled:
    due: float  # Unix seconds
    seq: int
    msg: WireMessage
    sender: Sender
    arrived: float
    queued: bool = True  # False once fired or dropped (the heaps forget it lazily)


@dataclass
class _Share:
    count: int = 0
    nbytes: int = 0
    latest: list[tuple[float, int, Scheduled]] = field(default_factory=list)  # max-heap by due (negated)


class QueueFull(UserError):
    """The queue is full and the newcomer already holds the largest share: its bundle is
    refused, as any bad input is (answered with ``/error``)."""


class FutureQueue:
    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._heap: list[tuple[float, int, Scheduled]] = []
        self._shares: dict[Sender, _Share] = {}
        self._seq = itertools.count()
        self.count = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.count

    def next_due(self) -> float | None:
        self._forget_heads()
        return self._heap[0][0] if self._heap else None

    def add(self, msg: WireMessage, sender: Sender, arrived: float) -> list[Scheduled]:
        """Queue ``msg``; returns the messages dropped to make room (other senders').
        Raises ``QueueFull`` when ``sender`` itself holds the largest share."""
        dropped: list[Scheduled] = []
        while self.count + 1 > self.max_messages or self.nbytes + msg.size > self.max_bytes:
            victim = self._largest()
            own = self._shares.get(sender, _Share())
            if victim is None or victim == sender or self._load(self._shares[victim]) <= self._load(own, 1, msg.size):
                raise QueueFull
            dropped.append(self._drop_latest(victim))
        entry = Scheduled(msg.timetag or 0.0, next(self._seq), msg, sender, arrived)
        share = self._shares.setdefault(sender, _Share())
        share.count += 1
        share.nbytes += msg.size
        heapq.heappush(share.latest, (-entry.due, -entry.seq, entry))
        heapq.heappush(self._heap, (entry.due, entry.seq, entry))
        self.count += 1
        self.nbytes += msg.size
        return dropped

    def pop_due(self, now: float) -> list[Scheduled]:
        out: list[Scheduled] = []
        self._forget_heads()
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)[2]
            self._release(entry)
            out.append(entry)
            self._forget_heads()
        return out

    # --- internals ------------------------------------------------------------------
    def _load(self, share: _Share, more: int = 0, more_bytes: int = 0) -> float:
        return max((share.count + more) / self.max_messages, (share.nbytes + more_bytes) / self.max_bytes)

    def _largest(self) -> Sender | None:
        return max(self._shares, key=lambda s: self._load(self._shares[s]), default=None)

    def _drop_latest(self, sender: Sender) -> Scheduled:
        share = self._shares[sender]
        while True:
            entry = heapq.heappop(share.latest)[2]
            if entry.queued:
                self._release(entry)
                return entry

    def _release(self, entry: Scheduled) -> None:
        entry.queued = False
        share = self._shares[entry.sender]
        share.count -= 1
        share.nbytes -= entry.msg.size
        self.count -= 1
        self.nbytes -= entry.msg.size
        if share.count == 0:
            del self._shares[entry.sender]
        elif len(share.latest) > 2 * share.count + 16:  # fired entries are forgotten lazily: keep it bounded
            share.latest = [item for item in share.latest if item[2].queued]
            heapq.heapify(share.latest)
        if len(self._heap) > 2 * self.count + 64:  # so are dropped ones
            self._heap = [item for item in self._heap if item[2].queued]
            heapq.heapify(self._heap)

    def _forget_heads(self) -> None:
        while self._heap and not self._heap[0][2].queued:
            heapq.heappop(self._heap)
