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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

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


def jack_server(tmp: Path, *, period: int = 1024, tag: str = "", realtime: bool = False) -> Iterator[dict[str, str]]:
    """A JACK server on the dummy driver, ``period`` frames a cycle at 48 kHz (rtmidi stamps
    MIDI per cycle, so MIDI timing tests want a short one); ``tag`` tells two apart.
    ``realtime``: its threads, and its clients' process threads, scheduled real-time, so
    a busy machine does not make them miss cycles (a client that misses one loses its
    MIDI); where that is not allowed, jackd runs without it."""
    if not shutil.which("jackd") or not shutil.which("jack_lsp"):
        unavailable("jackd is not installed (apt-get install jackd2)")
    name = f"steerbridge-test-{os.getpid()}{tag}"
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
    log = (tmp / "jackd.log").open("w")
    proc = subprocess.Popen(["jackd", "--realtime" if realtime else "--no-realtime", "-n", name,
                             "-d", "dummy", "-r", "48000", "-p", str(period)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    ok = _wait(lambda: subprocess.run(["jack_lsp"], env=env, capture_output=True).returncode == 0, 10)
    if not ok:
        proc.kill()
        unavailable(f"jackd -d dummy did not start: {(tmp / 'jackd.log').read_text()[-300:]}")
    try:
        yield {"JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
    finally:
        _stop(proc, log)


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
