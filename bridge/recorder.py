"""A WAV recorder that is a valid file at every moment.

The RIFF and data sizes in the header are rewritten after every block, so a recording
cut short by Ctrl-C, SIGTERM, a fault, or even a kill, is a playable WAV holding
everything written so far. Writes happen on the recorder's own thread, so the engine
never waits on the disk.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("steerbridge.record")

_HEADER = 44


def _header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    block_align = channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
            + b"data" + struct.pack("<I", data_bytes))


class WavRecorder:
    """16-bit PCM WAV; ``write`` takes float32 [n, channels] from any one thread."""

    def __init__(self, path: str | Path, sample_rate: int, channels: int) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".wav":
            raise ValueError(f"--record wants a .wav file, got {self.path.name!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._file.write(_header(self.channels, self.sample_rate, 0))
        self._file.flush()
        self._queue: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def write(self, block: np.ndarray) -> None:
        if not self.closed:
            self._queue.put(np.ascontiguousarray(block, dtype=np.float32))

    def close(self) -> None:
        """Write what is queued, finish the header, close. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        data_bytes = 0
        try:
            while True:
                block = self._queue.get()
                if block is None:
                    break
                pcm = (np.clip(block, -1.0, 1.0) * 32767.0).round().astype("<i2")
                self._file.write(pcm.tobytes())
                data_bytes += pcm.nbytes
                self.frames += block.shape[0]
                self._patch(data_bytes)
        except OSError as exc:
            log.error("recording to %s stopped: %s", self.path, exc)
        finally:
            try:
                self._patch(data_bytes)
                self._file.close()
            except OSError as exc:  # the disk is gone; the header from the last block still stands
                log.error("could not finish %s: %s", self.path, exc)

    def _patch(self, data_bytes: int) -> None:
        f = self._file
        f.seek(4)
        f.write(struct.pack("<I", 36 + data_bytes))
        f.seek(40)
        f.write(struct.pack("<I", data_bytes))
        f.seek(0, 2)
        f.flush()
