"""Where the audio goes: a sound card through sounddevice, or a clock with no device.

Both read the ring buffer in fixed blocks and do nothing else: the sounddevice
callback runs on PortAudio's thread and only copies (``Ring.read_into``); the clock
output is the same reader paced by ``time.monotonic`` for ``--audio-out none``, so
headless runs, CI and recording behave exactly like a live set.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy as np

from steering_core.errors import UserError

from .ring import Ring

log = logging.getLogger("steerbridge.audio")

DEFAULT_RATE = 48000


class OutputError(UserError):
    """No usable audio device: PortAudio missing, device unknown, or it failed to open."""


class Output(Protocol):
    sample_rate: int
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise OutputError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    return sounddevice


def list_audio_devices() -> list[str]:
    sd = _sounddevice()
    hostapis = sd.query_hostapis()
    out = []
    for i, dev in enumerate(sd.query_devices()):
        if dev["max_output_channels"] > 0:
            api = hostapis[dev["hostapi"]]["name"]
            out.append(f"{i}: {dev['name']} ({api}, {dev['max_output_channels']} ch, {dev['default_samplerate']:.0f} Hz)")
    return out


class DeviceOutput:
    """A sounddevice OutputStream whose callback only copies from the ring."""

    def __init__(self, ring: Ring, device: str, *, blocksize: int = 256) -> None:
        sd = _sounddevice()
        spec: int | str | None = None if device == "default" else (int(device) if device.isdigit() else device)
        try:
            info = sd.query_devices(spec, "output")
        except (ValueError, sd.PortAudioError) as exc:
            raise OutputError(f"no audio output device {device!r}: {exc}") from None
        self.ring = ring
        self.name = str(info["name"])
        self.sample_rate = int(info["default_samplerate"]) or DEFAULT_RATE
        self._spec = spec
        self._blocksize = blocksize
        self._sd = sd
        self._stream: Any = None

    def start(self) -> None:
        ring = self.ring

        def callback(outdata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
            # PortAudio's thread: copy, never raise, never lock.
            ring.read_into(outdata)

        try:
            self._stream = self._sd.OutputStream(
                device=self._spec, samplerate=self.sample_rate, channels=self.ring.channels, dtype="float32",
                blocksize=self._blocksize, latency="low", callback=callback)
            self._stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            raise OutputError(f"cannot open audio output {self.name!r}: {exc}") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class ClockOutput:
    """``--audio-out none``: consumes the ring at real time, as a sound card would."""

    def __init__(self, ring: Ring, *, sample_rate: int = DEFAULT_RATE, blocksize: int = 480) -> None:
        self.ring = ring
        self.name = "none (clock)"
        self.sample_rate = sample_rate
        self._blocksize = blocksize
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        block = np.zeros((self._blocksize, self.ring.channels), np.float32)
        period = self._blocksize / self.sample_rate
        due = time.monotonic()
        while not self._stop.is_set():
            self.ring.read_into(block)
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:  # the machine stalled; do not try to catch up a second of blocks
                due = time.monotonic()


def open_output(spec: str, ring_channels: int) -> tuple[str, int, Any]:
    """Resolve ``--audio-out`` to (kind, sample rate, factory taking the ring). Falls back
    to the clock with one clear line when the device cannot be used."""
    if spec == "none":
        return "none", DEFAULT_RATE, lambda ring: ClockOutput(ring)
    try:
        probe = DeviceOutput(Ring(16, ring_channels), spec)
    except OutputError as exc:
        log.warning("%s; playing on a silent clock instead (--audio-out none)", exc)
        return "none", DEFAULT_RATE, lambda ring: ClockOutput(ring)
    return "device", probe.sample_rate, lambda ring: DeviceOutput(ring, spec)
