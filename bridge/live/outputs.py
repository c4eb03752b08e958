"""Where the audio goes: a registry of outputs, by name.

An output is opened from ``--audio-out``, reports its format (name, sample rate,
channel count) before anything is built for it, and, once started, reads one ring
buffer in fixed blocks and does nothing else: the sounddevice callback runs on
PortAudio's thread and only copies (``Ring.read_into``); the clock output is the same
reader paced by ``time.monotonic`` for ``--audio-out none``, so headless runs, CI and
recording behave exactly like a live set. A sound card playing a set of stems is opened
with a channel pair per stem as far as they fit (``device_channels.py``).

``OUTPUTS`` maps a name to a factory taking the rest of the spec; another kind of
output is one more entry (``jack``'s lives in ``jack_output.py``, imported when asked for).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any, Protocol

import numpy as np

from steering_core.errors import UserError

from .device_channels import STEREO, layout_line, opened_channels, reports_own_channels
from .ring import Ring

log = logging.getLogger("steerbridge.audio")

DEFAULT_RATE = 48000
#: Channels asked of an output that lets us choose: stereo (a mono model plays on both sides).
DEFAULT_CHANNELS = 2


class OutputError(UserError):
    """No usable audio output: PortAudio missing, device unknown, or it failed to open."""


class Output(Protocol):
    """One output stream. Its format is known once it is opened; ``start`` hands it the
    ring it reads from then on, on its own thread; ``stop`` ends the reading."""

    name: str
    sample_rate: int
    channels: int
    #: Seconds from a sample leaving ``read_into`` to the listener hearing it (the device's
    #: or the ports' own latency), so the musical grid is placed where it is heard.
    latency_s: float

    def start(self, ring: Ring) -> None: ...
    def stop(self) -> None: ...


#: Opens an output from what follows its name in the spec ("" for none).
OutputFactory = Callable[[str], Output]


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
    """A sounddevice OutputStream whose callback only copies from the ring. With ``stems``
    (the ring's stem rows, in order) it opens as many channels as ``device_channels``
    gives: the mix on 1-2, then each stem's pair."""

    def __init__(self, device: str, *, blocksize: int = 256, stems: Sequence[str] = (),
                 stem_channels: int | None = None) -> None:
        sd = _sounddevice()
        spec: int | str | None = None if device in ("", "default") else (int(device) if device.isdigit() else device)
        try:
            info = sd.query_devices(spec, "output")
        except (ValueError, sd.PortAudioError) as exc:
            raise OutputError(f"no audio output device {device!r}: {exc}") from None
        self.name = str(info["name"])
        self.sample_rate = int(info["default_samplerate"]) or DEFAULT_RATE
        own_count = reports_own_channels(self.name, str(sd.query_hostapis(info["hostapi"])["name"]))
        self.channels = opened_channels(int(info["max_output_channels"]), len(stems), stem_channels,
                                        own_count=own_count, device=repr(self.name))
        if stems:
            log.info("%s", layout_line(self.name, self.channels, stems))
        self._spec = spec
        self._blocksize = blocksize
        self._sd = sd
        self._stream: Any = None
        self.latency_s = 0.0  # PortAudio's figure once the stream is open

    def start(self, ring: Ring) -> None:
        def callback(outdata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
            # PortAudio's thread: copy, never raise, never lock.
            ring.read_into(outdata)

        mono = self.channels == 1 and ring.channels >= STEREO
        try:
            self._stream = self._sd.OutputStream(
                device=self._spec, samplerate=self.sample_rate, channels=self.channels, dtype="float32",
                blocksize=self._blocksize, latency="low",
                callback=_mono_mix_callback(ring, self._blocksize) if mono else callback)
            self._stream.start()
            self.latency_s = float(self._stream.latency)
        except (self._sd.PortAudioError, ValueError) as exc:
            raise OutputError(f"cannot open audio output {self.name!r}: {exc}") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


def _mono_mix_callback(ring: Ring, blocksize: int) -> Callable[[np.ndarray, int, Any, Any], None]:
    """A mono card's callback: the mean of the mix's two sides (a stereo chain's reverb or
    delay differs between them), through a buffer made here, not in the callback."""
    both = np.zeros((blocksize, STEREO), np.float32)

    def callback(outdata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
        if frames > len(both):  # never with a fixed blocksize; the left side, rather than nothing
            ring.read_into(outdata)
            return
        mix = both[:frames]
        ring.read_into(mix)
        np.add(mix[:, 0], mix[:, 1], out=outdata[:, 0])
        outdata *= 0.5

    return callback


class ClockOutput:
    """``--audio-out none``: consumes the ring at real time, as a sound card would."""

    def __init__(self, *, sample_rate: int = DEFAULT_RATE, channels: int = DEFAULT_CHANNELS,
                 blocksize: int = 480) -> None:
        self.name = "none (clock)"
        self.sample_rate = sample_rate
        self.channels = channels
        self.latency_s = 0.0
        self.ring: Ring | None = None  # start's
        self._blocksize = blocksize
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock-output", daemon=True)

    def start(self, ring: Ring) -> None:
        self.ring = ring
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        ring = self.ring
        assert ring is not None, "start() gives the clock its ring"
        block = np.zeros((self._blocksize, ring.channels), np.float32)
        period = self._blocksize / self.sample_rate
        due = time.monotonic()
        while not self._stop.is_set():
            ring.read_into(block)
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:  # the machine stalled; do not try to catch up a second of blocks
                due = time.monotonic()


def open_jack(rest: str, connect: Sequence[str] = (), stems: Sequence[str] = ()) -> Output:
    """``jack`` or ``jack:CLIENT``: JACK output ports (a pair more per stem). Its module
    (JACK-Client, libjack) is loaded by name when asked for, as ``--sync`` sources are; it
    builds on this one."""
    made: Output = import_module("bridge.live.jack_output").JackOutput(rest, connect=connect, stems=stems)
    return made


def open_clock(_rest: str) -> Output:
    # ClockOutput looked up when called: the realtime tests put a slower clock in its place.
    return ClockOutput()


#: Every output ``--audio-out`` can name; a spec naming none of them is a sound card.
OUTPUTS: dict[str, OutputFactory] = {"device": DeviceOutput, "jack": open_jack, "none": open_clock}


def parse_output_spec(spec: str) -> tuple[str, str]:
    """``--audio-out`` -> (output name, the rest): ``none``, ``name`` or ``name:rest`` for a
    registered output; anything else (``default``, a number, a device's name, which may
    hold a colon, as ALSA's ``hw:0,0`` does) is the sound card of that name."""
    name, sep, rest = spec.partition(":")
    if name in OUTPUTS and (sep or name == spec):
        return name, rest
    return "device", spec


def output_factory(name: str) -> OutputFactory:
    try:
        return OUTPUTS[name]
    except KeyError:
        raise OutputError(f"unknown output {name!r}; there are: {', '.join(sorted(OUTPUTS))}") from None


def open_output(spec: str, jack_connect: Sequence[str] = (), stems: Sequence[str] = (),
                stem_channels: int | None = None) -> Output:
    """The output ``--audio-out`` names, opened (a JACK output connected to the ports
    ``jack_connect`` names, with a port pair per stem of ``stems``; a sound card with a
    channel pair per stem as far as they fit, ``stem_channels`` of them if given, see
    device_channels.py; the clock plays the mix). An output that cannot be used falls back
    to the silent clock with one line, so a set without its sound card still runs; a device
    with fewer channels than ``stem_channels`` is refused."""
    name, rest = parse_output_spec(spec)
    factory = output_factory(name)
    if jack_connect and name != "jack":
        raise UserError("--jack-connect needs --audio-out jack")
    if stem_channels is not None and not (stems and name == "device"):
        raise UserError("--stem-channels needs stems (--stem or --set) on a sound card; "
                        "--audio-out jack gives each stem its own ports")
    try:
        if name == "jack" and (jack_connect or stems):
            return open_jack(rest, jack_connect, stems)
        if name == "device" and stems:
            return DeviceOutput(rest, stems=stems, stem_channels=stem_channels)
        return factory(rest)
    except OutputError as exc:
        if name == "none":
            raise
        log.warning("%s; playing on a silent clock instead (--audio-out none)", exc)
        return output_factory("none")("")
