"""Token buckets: how many replies (and bytes) a destination may get, how many messages
a sender may pass on. Pure arithmetic on a clock you pass in, so it tests exactly."""

from __future__ import annotations

MAX_KEYS = 1024


class TokenBuckets:
    """Per key, at most ``per_s`` events and ``bytes_per_s`` bytes a second, with a burst of
    ``burst_s`` seconds' worth. Not thread-safe: one owner thread."""

    def __init__(self, per_s: float, bytes_per_s: float = float("inf"), burst_s: float = 0.5) -> None:
        self.per_s, self.bytes_per_s, self.burst_s = per_s, bytes_per_s, burst_s
        self._buckets: dict[object, tuple[float, float, float]] = {}  # key -> (time, events, bytes)
        self.refused = 0

    def allow(self, key: object, now: float, size: int = 0) -> bool:
        full = (self.per_s * self.burst_s, self.bytes_per_s * self.burst_s)
        then, count, nbytes = self._buckets.get(key, (now, *full))
        elapsed = max(0.0, now - then)
        count = min(full[0], count + elapsed * self.per_s)
        nbytes = min(full[1], nbytes + elapsed * self.bytes_per_s)
        ok = count >= 1 and nbytes >= size
        if ok:
            count, nbytes = count - 1, nbytes - size
        else:
            self.refused += 1
        if key not in self._buckets and len(self._buckets) >= MAX_KEYS:
            self._buckets.clear()  # a spray of spoofed sources: start over rather than grow
        self._buckets[key] = (now, count, nbytes)
        return ok
