"""A WAV recorder that is a valid file at every moment.

The RIFF and data sizes in the header are rewritten after every block, so a recording
cut short by Ctrl-C, SIGTERM, a fault, or even a kill, is a playable WAV holding
everything written so far. Writes happen on the recorder's own thread, so the engine
never waits on the disk.

The queue to that thread is bounded (``MAX_QUEUED_S`` of audio): a disk that is slow
loses blocks (counted, said once) rather than memory. A disk that fails (full, gone)
stops the recording for good: the file is cut back to the last whole block, its header
says exactly that, ``write`` drops everything after, and the set plays on.

A recording that starts later than the set (a stem added while playing) says where it
starts: a Broadcast Wave ``bext`` chunk whose TimeReference is its first frame's place in
the set, in samples, so a DAW that places files at their timestamp (Reaper, Pro Tools,
Ardour, Nuendo) lines it up with the others.
"""

from __future__ import annotations

import errno
import logging
import queue
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from steering_core.errors import UserError

log = logging.getLogger("steerbridge.record")

_HEADER = 44
MAX_QUEUED_S = 10.0


_BEXT_BYTES = 602  # EBU Tech 3285's fixed part, with no coding history


def bext_chunk(description: str, time_reference: int) -> bytes:
    """A Broadcast Wave ``bext`` chunk (version 1): who made the file, when, and
    ``time_reference``, the sample its first frame sits at."""
    now = time.localtime()
    body = (description.encode("ascii", "replace")[:256].ljust(256, b"\0")
            + b"steerbridge".ljust(32, b"\0") + b"".ljust(32, b"\0")
            + time.strftime("%Y-%m-%d", now).encode() + time.strftime("%H:%M:%S", now).encode()
            + struct.pack("<IIH", time_reference & 0xFFFFFFFF, time_reference >> 32, 1)
            + bytes(64 + 190))  # no UMID; reserved
    assert len(body) == _BEXT_BYTES
    return b"bext" + struct.pack("<I", _BEXT_BYTES) + body


def _header(channels: int, sample_rate: int, data_bytes: int, extra: bytes = b"") -> bytes:
    """The file's header; ``extra``: whole chunks between ``fmt`` and ``data``."""
    block_align = channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + len(extra) + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
            + extra + b"data" + struct.pack("<I", data_bytes))


class WavRecorder:
    """16-bit PCM WAV; ``write`` takes float32 [n, channels] from any one thread.
    ``starts_at``: the sample of the set its first frame sits at, kept in a ``bext`` chunk
    (None: a plain WAV, which a DAW places at zero)."""

    def __init__(self, path: str | Path, sample_rate: int, channels: int, *, starts_at: int | None = None,
                 description: str = "steerbridge recording") -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".wav":
            raise UserError(f"--record wants a .wav file, got {self.path.name!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a buffer would hold bytes that a failed write left behind, and flush them
        # (and fail again) on truncate, so a full disk would leave stray bytes after the data.
        self._file = self.path.open("wb", buffering=0)
        self.starts_at = starts_at
        self._extra = b"" if starts_at is None else bext_chunk(description, max(0, int(starts_at)))
        self._header_bytes = _HEADER + len(self._extra)
        write_all(self._file, _header(self.channels, self.sample_rate, 0, self._extra))
        #: Blocks to append; a (frames back, block) pair rewrites the end of what was written.
        self._queue: queue.Queue[np.ndarray | tuple[int, np.ndarray] | None] = queue.Queue()
        self._queued_frames = 0
        self._queued_lock = threading.Lock()  # the engine thread adds, the recorder thread takes
        self.max_queued_frames = int(MAX_QUEUED_S * self.sample_rate)
        self.dropped_frames = 0
        self.failure: str | None = None  # set once when the disk fails; nothing is queued after
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def write(self, block: np.ndarray) -> None:
        if self.closed or self.failure is not None:
            return
        with self._queued_lock:
            full = self._queued_frames + block.shape[0] > self.max_queued_frames
            if not full:
                self._queued_frames += block.shape[0]
        if full:
            if not self.dropped_frames:
                log.warning("the disk under %s is not keeping up: dropping audio from the recording (the set plays on)",
                            self.path)
            self.dropped_frames += block.shape[0]
            return
        self._queue.put(np.ascontiguousarray(block, dtype=np.float32))

    def rewrite_tail(self, block: np.ndarray) -> None:
        """The last ``len(block)`` frames handed to ``write`` become ``block``: a stop faded
        in the ring (``Ring.fade_unread``) is recorded as it is played."""
        if self.closed or self.failure is not None or self.dropped_frames or not block.shape[0]:
            return  # after a drop the file's end is not the ring's: leave it as written
        self._queue.put((block.shape[0], np.ascontiguousarray(block, dtype=np.float32)))

    def summary(self) -> str:
        """Exactly what the file holds, for the last log line of a set."""
        seconds = self.frames / self.sample_rate
        text = (f"{self.path} holds {self.frames} frames ({seconds:.2f} s) of {self.channels}-channel 16-bit "
                f"audio at {self.sample_rate} Hz")
        if self.failure is not None:
            text += f"; recording stopped early: {self.failure}"
        if self.dropped_frames:
            text += f"; {self.dropped_frames} frames ({self.dropped_frames / self.sample_rate:.2f} s) were not recorded"
        return text

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
                if isinstance(block, tuple):  # everything queued before it is on disk: its end is known
                    back, tail = block
                    back = min(back, self.frames)
                    if back:
                        self._file.seek(self._header_bytes + (self.frames - back) * self.channels * 2)
                        write_all(self._file, _pcm(tail[-back:]).tobytes())
                        self._file.seek(0, 2)
                    continue
                with self._queued_lock:
                    self._queued_frames -= block.shape[0]
                pcm = _pcm(block)
                write_all(self._file, pcm.tobytes())
                data_bytes += pcm.nbytes
                self.frames += block.shape[0]
                self._patch(data_bytes)
        except OSError as exc:
            self.failure = exc.strerror or str(exc)
            log.error("recording to %s stopped: %s; the file stays valid with the %.2f s written so far, "
                      "and the set plays on", self.path, self.failure, self.frames / self.sample_rate)
            self._drain()
        finally:
            try:
                # What a failed write left of its block goes (freeing space, too): the header and
                # the file's length then agree, with nothing after the data.
                self._file.truncate(self._header_bytes + data_bytes)
                self._patch(data_bytes)
            except OSError as exc:  # the disk is gone; the header from the last block still stands
                log.error("could not finish %s: %s", self.path, exc)
            finally:
                self._file.close()

    def _drain(self) -> None:
        """Free what was queued before the failure; ``write`` queues nothing after it."""
        while True:
            try:
                block = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(block, np.ndarray):  # a rewrite of the end adds no frames
                self.dropped_frames += block.shape[0]

    def _patch(self, data_bytes: int) -> None:
        f = self._file
        f.seek(4)
        write_all(f, struct.pack("<I", self._header_bytes - 8 + data_bytes))
        f.seek(self._header_bytes - 4)
        write_all(f, struct.pack("<I", data_bytes))
        f.seek(0, 2)


def _pcm(block: np.ndarray) -> np.ndarray:
    return (np.clip(block, -1.0, 1.0) * 32767.0).round().astype("<i2")


def write_all(f: BinaryIO, data: bytes) -> None:
    """An unbuffered write may take part of ``data`` (a disk filling up): write the rest, or
    raise the ``OSError`` the disk gives."""
    view = memoryview(data)
    while view:
        written = f.write(view)
        if not written:
            raise OSError(errno.ENOSPC, "the disk took no more bytes")
        view = view[written:]
