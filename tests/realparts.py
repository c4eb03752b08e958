"""The real parts end-to-end tests run against: a JACK server (dummy driver) for MIDI,
and a PulseAudio server with a null sink for audio. Each fixture starts its own
server, isolated by name or socket, and stops it afterwards.

Without the programs (or the rights to run them) the tests skip with a message; with
CI=true a skip is a failure, because CI must prove the real path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from bridge.clock.source import ClockReading

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SINK = "steerbridge_test"


def unavailable(why: str) -> None:
    if ON_CI:
        pytest.fail(f"device test cannot run on CI: {why}")
    pytest.skip(why)


def _wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen, log: IO[str]) -> None:
    """Stop a server this fixture started (and only that one)."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


class JackServer:
    """One ``jackd -d dummy`` under its own name, which a test may stop and start again
    (the server going away mid-set and coming back). ``period`` frames a cycle (rtmidi
    stamps MIDI per cycle, so MIDI timing tests want a short one). ``realtime``: its
    threads, and its clients' process threads, scheduled real-time, so a busy machine does
    not make them miss cycles (a client that misses one loses its MIDI); where that is not
    allowed, jackd runs without it."""

    def __init__(self, tmp: Path, name: str, period: int = 1024, rate: int = 48000, *, realtime: bool = False) -> None:
        if not shutil.which("jackd") or not shutil.which("jack_lsp"):
            unavailable("jackd is not installed (apt-get install jackd2)")
        self.tmp, self.name, self.period, self.rate, self.realtime = tmp, name, period, rate, realtime
        self.env = {"JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
        self.proc: subprocess.Popen | None = None
        self._log: IO[str] | None = None
        self.starts = 0

    def _up(self) -> bool:
        return subprocess.run(["jack_lsp"], env={**os.environ, **self.env}, capture_output=True).returncode == 0

    def start(self) -> None:
        self.starts += 1
        log_path = self.tmp / f"jackd-{self.starts}.log"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(["jackd", "--realtime" if self.realtime else "--no-realtime", "-n", self.name,
                                      "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
                                     env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT)
        if not _wait(self._up, 10):
            self.proc.kill()
            unavailable(f"jackd -d dummy did not start: {log_path.read_text()[-300:]}")

    def stop(self) -> None:
        """SIGTERM, as a DAW or a session manager stops JACK; it cleans up after itself."""
        if self.proc is not None and self._log is not None:
            _stop(self.proc, self._log)
        self.proc = None


def own_jack_server(tmp: Path, monkeypatch: pytest.MonkeyPatch, name: str, **options: int) -> Iterator[JackServer]:
    """A JACK server of one test's own (the test may stop and start it), made the default
    server of the test's in-process clients; for a fixture to ``yield from``."""
    jackd = JackServer(tmp, name, **options)
    jackd.start()
    for key, value in jackd.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield jackd
    finally:
        jackd.stop()


def wait_for(check: Callable[[], bool], timeout: float = 5.0, every: float = 0.01) -> bool:
    """Whether ``check()`` held within ``timeout`` seconds (asked again once at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


class Readings:
    """A clock source's sink in a test: every reading, in order, appended on the source's thread."""

    def __init__(self) -> None:
        self.readings: list[ClockReading] = []
        self.lock = threading.Lock()

    def __call__(self, reading: ClockReading) -> None:
        with self.lock:
            self.readings.append(reading)

    def last(self) -> ClockReading | None:
        with self.lock:
            return self.readings[-1] if self.readings else None

    def since(self, t: float) -> list[ClockReading]:
        with self.lock:
            return [r for r in self.readings if r.at >= t]


def jack_server(tmp: Path, name: str | None = None, *, period: int = 1024, tag: str = "",
                realtime: bool = False) -> Iterator[dict[str, str]]:
    """A JACK server on the dummy driver for one test; ``tag`` tells two apart."""
    server = JackServer(tmp, name or f"steerbridge-test-{os.getpid()}{tag}", period, realtime=realtime)
    server.start()
    try:
        yield server.env
    finally:
        server.stop()


def pulse_server(tmp: Path) -> Iterator[dict[str, str]]:
    if not shutil.which("pulseaudio") or not shutil.which("parecord"):
        unavailable("pulseaudio is not installed (apt-get install pulseaudio pulseaudio-utils)")
    runtime = tmp / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    socket = runtime / "native"
    env = {"PULSE_SERVER": f"unix:{socket}", "PULSE_SINK": SINK, "PULSE_RUNTIME_PATH": str(runtime)}
    full = {**os.environ, **env, "HOME": str(tmp)}
    log = (tmp / "pulse.log").open("w")
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--use-pid-file=no",
         "--load", f"module-native-protocol-unix socket={socket} auth-anonymous=1",
         "--load", f"module-null-sink sink_name={SINK} rate=48000"],
        env=full, stdout=log, stderr=subprocess.STDOUT)
    ok = _wait(lambda: subprocess.run(["pactl", "info"], env=full, capture_output=True).returncode == 0, 10)
    if not ok:
        proc.kill()
        unavailable(f"pulseaudio did not start: {(tmp / 'pulse.log').read_text()[-300:]}")
    subprocess.run(["pactl", "set-default-sink", SINK], env=full, capture_output=True)
    try:
        yield env
    finally:
        _stop(proc, log)


#: PulseAudio's names for ALSA's channel order (what ALSA's pulse plugin maps a stream's channels to).
ALSA_ORDER = ("front-left", "front-right", "rear-left", "rear-right", "front-center", "lfe", "side-left", "side-right")


@contextmanager
def pulse_sink(env: dict[str, str], name: str, channels: int, rate: int = 48000) -> Iterator[dict[str, str]]:
    """A null sink of ``channels`` on the ``pulse_server`` of ``env``, in ALSA's channel order
    (so a stream through ALSA's pulse plugin lands on it channel for channel); yields the
    env that plays into it. Unloaded afterwards."""
    full = {**os.environ, **env}
    loaded = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}", f"channels={channels}",
                             f"channel_map={','.join(ALSA_ORDER[:channels])}", f"rate={rate}"],
                            env=full, capture_output=True, text=True)
    if loaded.returncode != 0:
        unavailable(f"pactl could not load a {channels}-channel null sink: {loaded.stderr.strip()}")
    try:
        yield {**env, "PULSE_SINK": name}
    finally:
        subprocess.run(["pactl", "unload-module", loaded.stdout.strip()], env=full, capture_output=True)


class TimebaseMaster:
    """A DAW in the test: a JACK client that is timebase master at ``bpm`` in 4/4 (BBT
    with 1920 ticks a beat) and starts, stops, locates and changes tempo when told.
    Independent of steerbridge's code: it is what the tests hold steerbridge to.
    Each process cycle it records (cycle start in JACK frames, transport frame, rolling)."""

    TICKS = 1920.0

    def __init__(self, bpm: float, name: str = "test-master") -> None:
        import collections

        import jack

        self.client = jack.Client(name, no_start_server=True)
        self.rate = self.client.samplerate
        self.period = self.client.blocksize
        self.anchor = (0, 0.0, float(bpm))  # the frame, its beat, the tempo from there on
        self.cycles: collections.deque[tuple[int, int, bool]] = collections.deque(maxlen=4096)
        self.client.set_process_callback(self._process)
        self.client.set_timebase_callback(self._timebase)
        self.client.activate()
        self.closed = False

    @property
    def bpm(self) -> float:
        return self.anchor[2]

    def beat_at(self, frame: int) -> float:
        start, beat, bpm = self.anchor
        return beat + (frame - start) / self.rate * bpm / 60.0

    def set_tempo(self, bpm: float) -> None:
        frame = self.client.transport_frame
        self.anchor = (frame, self.beat_at(frame), float(bpm))

    def _process(self, _frames: int) -> None:
        import jack

        state, pos = self.client.transport_query_struct()
        self.cycles.append((self.client.last_frame_time, int(pos.frame), state == jack.ROLLING))

    def _timebase(self, _state: int, _blocksize: int, pos, _new_pos: bool) -> None:
        import jack

        beat = self.beat_at(int(pos.frame))
        bar, in_bar = divmod(beat, 4)
        pos.valid = pos.valid | jack._lib.JackPositionBBT
        pos.bar, pos.beat = int(bar) + 1, int(in_bar) + 1
        pos.tick = int((in_bar - int(in_bar)) * self.TICKS)
        pos.bar_start_tick = bar * 4 * self.TICKS
        pos.beats_per_bar, pos.beat_type, pos.ticks_per_beat = 4.0, 4.0, self.TICKS
        pos.beats_per_minute = self.bpm

    def frame_time_at(self, monotonic: float) -> float:
        """JACK's frame time at a ``time.monotonic()`` moment, from the closest of a few
        back-to-back readings of both clocks (a preempted pair is thrown away)."""
        best = None
        for _ in range(20):
            before = time.monotonic()
            frames = self.client.frame_time
            after = time.monotonic()
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) / 2, frames)
        assert best is not None
        return best[2] + (monotonic - best[1]) * self.rate

    def transport_frame_at(self, frame_time: float) -> tuple[int, bool] | None:
        """The transport frame being played at JACK frame time ``frame_time``, and whether
        it rolled, from the recorded cycles."""
        for start, frame, rolling in reversed(list(self.cycles)):  # a copy: the process thread appends
            if start <= frame_time:
                return (round(frame + (frame_time - start)) if rolling else frame), rolling
        return None

    def close(self) -> None:
        """Before its server stops: a client of a dead server left to the garbage collector
        crashes the interpreter in libjack. Closing twice is harmless."""
        if not self.closed:
            self.closed = True
            self.client.deactivate()
            self.client.close()


class JackRecorder:
    """A JACK client in the test with two input ports that records what reaches them,
    with the JACK frame time at which its recording started."""

    def __init__(self, seconds: float, name: str = "test-recorder") -> None:
        import jack
        import numpy as np

        self.client = jack.Client(name, no_start_server=True)
        self.rate = self.client.samplerate
        self.ports = [self.client.inports.register(f"in_{side}") for side in ("L", "R")]
        self.audio = np.zeros((int(seconds * self.rate), 2), np.float32)
        self.filled = 0
        self.started_at: int | None = None  # JACK frame time of the first recorded sample
        self.recording = False
        self.client.set_process_callback(self._process)
        self.client.activate()
        self.closed = False

    def _process(self, frames: int) -> None:
        if not self.recording or self.filled + frames > len(self.audio):
            return
        if self.started_at is None:
            self.started_at = self.client.last_frame_time
        for side, port in enumerate(self.ports):
            self.audio[self.filled:self.filled + frames, side] = port.get_array()
        self.filled += frames

    def connect(self, sources: list[str]) -> None:
        for source, port in zip(sources, self.ports, strict=True):
            self.client.connect(source, port)

    def close(self) -> None:
        """Before its server stops: a client of a dead server left to the garbage collector
        crashes the interpreter in libjack. Closing twice is harmless."""
        if not self.closed:
            self.closed = True
            self.client.deactivate()
            self.client.close()


def assert_replays_bit_identically(log: Path, tmp: Path) -> None:
    """``render --automation log`` in a fresh process replays the performance's tokens exactly."""
    import sys
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--automation", str(log), "--out",
                          str(tmp / "replay.wav")], cwd=tmp, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()})
    assert run.returncode == 0, run.stderr
    assert "tokens identical to the performance" in run.stdout
