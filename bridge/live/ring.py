"""A single-writer, single-reader audio ring buffer.

The engine thread writes, the audio callback reads. Neither ever waits on the other:
each owns one counter (``written`` / ``read``, monotonic sample counts) and only
reads the other's, and in CPython assigning an int attribute is atomic. The writer
checks for space before writing; the reader fills silence (and counts an underrun)
when it finds too little.

The one-writer rule is enforced: a write that starts while another thread's write is
under way raises ``RuntimeError`` (in ``serve`` the engine thread writes while it
runs, and the main thread flushes the last samples after it has stopped).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class Ring:
    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._data = np.zeros((self.capacity, self.channels), np.float32)
        self.written = 0  # samples ever written (writer's counter)
        self.read = 0  # samples ever read (reader's counter)
        self.requested = 0  # samples the reader ever asked for, real or silence: the device's demand
        self.underruns = 0
        #: Reader-side log of (read counter after a block, monotonic time): the engine
        #: uses it to tell when a given sample left the callback.
        self.reads: deque[tuple[int, float]] = deque(maxlen=512)
        #: Whether an empty ring counts as an underrun (not before the first audio, nor
        #: while the transport is stopped).
        self.expect_audio = False
        self._writing = threading.Lock()  # only ever tried, never waited on: see write()

    @property
    def fill(self) -> int:
        return self.written - self.read

    @property
    def space(self) -> int:
        return self.capacity - self.fill

    # --- writer side ---------------------------------------------------------------
    def write(self, block: np.ndarray) -> int:
        """Append [n, channels] samples; returns the counter value of the first one.
        The caller keeps the ring from overflowing (it writes to a target fill)."""
        if not self._writing.acquire(blocking=False):
            raise RuntimeError(f"Ring.write from thread {threading.current_thread().name!r} while another "
                               "thread is writing: the ring has one writer (the engine thread)")
        try:
            n = block.shape[0]
            if n > self.space:
                raise OverflowError(f"ring buffer full: {n} samples for {self.space} free")
            start = self.written
            i = start % self.capacity
            first = min(n, self.capacity - i)
            self._data[i:i + first] = block[:first]
            self._data[: n - first] = block[first:]
            self.written = start + n  # publish only after the data is in place
            return start
        finally:
            self._writing.release()

    def fade_unread(self, n: int) -> tuple[int, np.ndarray]:
        """Writer side: the samples written but not yet read fade out over their first ``n``
        and are silent after, in place, so a stop is heard now rather than after the audio
        already buffered. Returns the first counter changed and the samples as they now are
        (the recording takes the same). The reader may be copying the first of them this
        instant; it then plays each sample faded or not, both of them sound."""
        if not self._writing.acquire(blocking=False):
            raise RuntimeError(f"Ring.fade_unread from thread {threading.current_thread().name!r} while another "
                               "thread is writing: the ring has one writer (the engine thread)")
        try:
            start, end = self.read, self.written
            index = np.arange(start, end) % self.capacity
            gain = np.zeros(end - start, np.float32)
            k = min(max(1, n), end - start)
            gain[:k] = np.linspace(1.0, 0.0, k, dtype=np.float32)
            self._data[index] *= gain[:, None]
            return start, self._data[index].copy()
        finally:
            self._writing.release()

    # --- reader side (the audio callback: no locks, no allocation beyond slicing) ---
    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` [frames, channels]; silence where the ring runs dry. Returns the
        number of real samples copied. An ``out`` with fewer channels than the ring takes
        the first ones (a set of stems: the mix, in front of each stem's pair); one with
        more has silence on the rest (a device opened with more channels than there are stems)."""
        frames, cols = out.shape[0], min(out.shape[1], self.channels)
        n = min(frames, self.written - self.read)
        i = self.read % self.capacity
        first = min(n, self.capacity - i)
        out[:first, :cols] = self._data[i:i + first, :cols]
        out[first:n, :cols] = self._data[: n - first, :cols]
        if cols < out.shape[1]:
            out[:n, cols:] = 0.0
        if n < frames:
            out[n:] = 0.0
            if self.expect_audio:
                self.underruns += 1
        self.read += n
        self.requested += frames
        self.reads.append((self.read, time.monotonic()))
        return n

    def time_read(self, index: int) -> float | None:
        """When the sample with counter ``index`` left the reader (None if not yet)."""
        if self.read <= index:
            return None
        for end, at in list(self.reads):
            if end > index:
                return at
        return None
