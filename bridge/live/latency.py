"""Control -> audio latency, per event: from the packet's arrival at the socket to the moment
the output's reader passes the first sample generated under the new value
(``control_latency_ms`` in ``/status/json``). The engine thread places events and polls;
the status thread reads the summary."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from .control import ControlEvent
from .ring import Ring


class LatencyMeter:
    """Control -> audio latency per event: arrival until its first sample left the output."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.samples: deque[float] = deque(maxlen=20000)
        # The engine thread appends, the status thread summarises: copying a deque while
        # it grows raises, so both hold this (for an append, or one copy).
        self._samples_lock = threading.Lock()
        self._waiting_frame: list[tuple[int, ControlEvent]] = []  # event, by first affected frame
        self._waiting_sample: list[tuple[int, ControlEvent]] = []  # event, by ring counter

    def expect(self, first_frame: int, event: ControlEvent) -> None:
        self._waiting_frame.append((first_frame, event))

    def placed(self, frames: tuple[int, int], ring_start: int, samples_per_frame: float) -> None:
        """Audio for frames [a, b) starts at ring counter ``ring_start``."""
        a, b = frames
        keep = []
        for frame, event in self._waiting_frame:
            if frame < b:
                index = ring_start + round(max(0, frame - a) * samples_per_frame)
                event.placed = index
                self._waiting_sample.append((index, event))
            else:
                keep.append((frame, event))
        self._waiting_frame = keep

    def poll(self) -> None:
        keep = []
        for index, event in self._waiting_sample:
            left = self.ring.time_read(index)
            if left is None:
                keep.append((index, event))
            else:
                with self._samples_lock:
                    self.samples.append(max(0.0, (left - event.arrived) * 1000.0))
        self._waiting_sample = keep

    def summary(self) -> dict[str, float | int | None]:
        with self._samples_lock:
            values = np.array(self.samples, dtype=np.float64)
        if not len(values):
            return {"p50": None, "p95": None, "n": 0}
        return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2),
                "n": len(values)}
