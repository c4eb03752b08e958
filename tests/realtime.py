"""Real-time tests on a machine that may be busy.

A test that plays audio against a clock needs the engine to keep up with that clock.
On a loaded machine (other jobs, CI neighbours, ``--cpu-hog``) the tiny model may
generate slower than real time, and every such test would fail for a reason that has
nothing to do with what it checks. So real-time tests measure how fast this machine
generates *right now* and run their audio clock at a speed with fixed headroom over
that: on a quiet machine, real time; on a busy one, slower. Durations a test sets up
(an artificial slow prefill, deadlines) scale by the same factor, so what is checked
(a re-prime longer than the ring is covered by the top-up; the music keeps flowing)
is the same at every speed.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from bridge.live.outputs import ClockOutput
from steering_core.codec.streaming import decode
from steering_core.model.loading import MusicGenHandle
from steering_core.stream.decode_loop import MusicStream

#: The engine must generate this many times faster than the audio clock consumes.
HEADROOM = 4.0
#: Slowest clock we run (a tenth of real time); below it a test would take minutes.
MIN_SPEED = 0.1


def generation_rtf(handle: MusicGenHandle, frames: int = 40, tries: int = 2) -> float:
    """Audio seconds generated (tokens and codec) per wall-clock second, best of ``tries``."""
    best = 0.0
    for attempt in range(tries):
        stream = MusicStream(handle, "calibration", seed=attempt)
        stream.generate_frames(4)  # warm-up: caches, allocator
        start = time.perf_counter()
        decode(handle, stream.generate_frames(frames))
        best = max(best, frames / handle.frame_rate / (time.perf_counter() - start))
    return best


def clock_speed(handle: MusicGenHandle) -> float:
    """How fast the audio clock may run here: 1.0 (real time) unless the machine is too busy."""
    return max(MIN_SPEED, min(1.0, generation_rtf(handle) / HEADROOM))


class ScaledClock(ClockOutput):
    """``--audio-out none``'s clock, consuming ``speed`` seconds of audio per wall second."""

    speed = 1.0

    def _run(self) -> None:
        block = np.zeros((self._blocksize, self.ring.channels), np.float32)
        period = self._blocksize / (self.sample_rate * self.speed)
        due = time.monotonic()
        while not self._stop.is_set():
            self.ring.read_into(block)
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                due = time.monotonic()


class CpuHogs:
    """``n`` busy-looping processes beside the tests (``pytest --cpu-hog N``): the load that
    made real-time tests fail before they measured the machine. Stopped, by their own
    handles, when the session ends."""

    def __init__(self, n: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self.processes = [ctx.Process(target=_spin, args=(self._stop,), daemon=True, name=f"cpu-hog-{i}")
                          for i in range(n)]
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        self._stop.set()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def _spin(stop: threading.Event) -> None:
    parent = os.getppid()
    x = 0
    while not stop.is_set() and os.getppid() == parent:  # a killed pytest must not leave hogs behind
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
