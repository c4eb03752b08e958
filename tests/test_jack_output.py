"""``--audio-out jack``: steerbridge's audio as JACK ports, against a real ``jackd -d
dummy``, recorded back by a JACK client in the test (tests/realparts.py)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from bridge.live.options import EngineSettings
from bridge.live.outputs import ClockOutput, open_output
from bridge.live.ring import Ring
from steering_core.errors import UserError
from tests.oscclient import Client
from tests.realparts import JackRecorder, JackServer, own_jack_server, wait_for

jack = pytest.importorskip("jack")

_names = itertools.count()
RATE = 48000
PERIOD = 1024


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[JackServer]:
    yield from own_jack_server(tmp_path, monkeypatch, f"steerbridge-out-{os.getpid()}-{next(_names)}", period=PERIOD, rate=RATE)


def sine(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    mono = (0.5 * np.cos(2 * np.pi * hz * t)).astype(np.float32)  # its first sample is not 0
    return np.stack([mono, -mono], axis=1)  # left and right told apart by sign


def speakers_latency() -> int:
    out = subprocess.run(["jack_lsp", "-l", "system:playback_1"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"playback latency = \[ \d+ (\d+) \]", out)
    assert found, out
    return int(found.group(1))


@pytest.mark.realtime
def test_the_ports_play_the_ring_and_report_their_latency(server) -> None:
    recorder = JackRecorder(2.0)
    output = open_output("jack", ("system:playback_1", "system:playback_2"))
    try:
        assert output.name == "JACK (steerbridge:out_L/out_R)" and output.sample_rate == RATE
        assert output.channels == 2
        ports = {p.name for p in recorder.client.get_ports("steerbridge:")}
        assert ports == {"steerbridge:out_L", "steerbridge:out_R"}
        connected = {p.name for p in recorder.client.get_all_connections("steerbridge:out_L")}
        assert connected == {"system:playback_1"}
        assert output.latency_s == pytest.approx((PERIOD + speakers_latency()) / RATE)
        assert output.latency_s > speakers_latency() / RATE

        ring = Ring(RATE * 3, 2)
        audio = sine(1.5)
        ring.write(audio)
        recorder.connect(["steerbridge:out_L", "steerbridge:out_R"])
        recorder.recording = True
        output.start(ring)
        assert wait_for(lambda: ring.read >= len(audio), 10), "JACK's process thread takes the ring"
        assert wait_for(lambda: recorder.filled >= len(recorder.audio) - PERIOD, 10)
        got = recorder.audio[:recorder.filled]
        # What was played is the ring's audio, sample for sample, from where it began.
        start = int(np.argmax(np.abs(got[:, 0]) > 1e-6))
        played = got[start:start + len(audio) - PERIOD]
        assert len(played) > RATE // 2
        np.testing.assert_array_equal(played, audio[:len(played)])
        assert output.callback_errors == 0  # type: ignore[attr-defined]
    finally:
        output.stop()
        recorder.close()


def test_a_port_that_is_not_there_is_one_line_naming_those_that_are(server) -> None:
    with pytest.raises(UserError, match=r"--jack-connect: no JACK input port 'nowhere:in'; there are: "
                                        r"system:playback_1, system:playback_2"):
        open_output("jack", ("system:playback_1", "nowhere:in"))
    time.sleep(0.2)
    listing = subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout
    assert "steerbridge" not in listing, "the half-made client is closed"


def test_jack_connect_names_where_the_mix_goes_and_never_a_stems_pair(server) -> None:
    """Four targets are left, right, left, right of the mix, with stems too: the stems' pairs
    are for the DAW to pick up, not dealt round the list."""
    recorder = JackRecorder(1.0)
    output = open_output("jack", ("system:playback_1", "system:playback_2", "test-recorder:in_L",
                                  "test-recorder:in_R"), stems=("drums", "bass"))
    try:
        def into(port: str) -> set[str]:
            return {p.name for p in recorder.client.get_all_connections(port)}
        assert into("test-recorder:in_L") == {"steerbridge:out_L"}
        assert into("test-recorder:in_R") == {"steerbridge:out_R"}
        assert into("system:playback_1") == {"steerbridge:out_L"}
        assert into("system:playback_2") == {"steerbridge:out_R"}
        for stem_port in ("drums_L", "drums_R", "bass_L", "bass_R"):
            assert not into(f"steerbridge:{stem_port}"), f"{stem_port} is left for the DAW"
    finally:
        output.stop()
        recorder.close()


def test_no_jack_server_falls_back_to_the_silent_clock_with_one_line(monkeypatch, caplog) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"steerbridge-absent-{os.getpid()}")
    with caplog.at_level(logging.WARNING, "steerbridge.audio"):
        output = open_output("jack")
    assert isinstance(output, ClockOutput)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "no JACK server 'steerbridge-absent-" in lines[0] and "silent clock" in lines[0]


def test_jack_connect_without_jack_is_refused() -> None:
    with pytest.raises(UserError, match="--jack-connect needs --audio-out jack"):
        open_output("none", ("system:playback_1",))


@pytest.mark.realtime
def test_a_server_that_goes_away_leaves_the_music_on_the_silent_clock_and_the_ports_come_back(
        server, caplog) -> None:
    caplog.set_level(logging.INFO, "steerbridge.audio")
    output = open_output("jack", ("system:playback_1", "system:playback_2"))
    ring = Ring(RATE * 30, 2)
    ring.write(sine(20.0))
    output.start(ring)
    try:
        assert wait_for(lambda: ring.read > RATE // 4)
        server.stop()
        assert wait_for(lambda: any("went away" in r.getMessage() for r in caplog.records), 3)
        read = ring.read
        assert wait_for(lambda: ring.read > read + RATE // 4, 3), "the silent clock reads the ring on"
        server.start()
        assert wait_for(lambda: any("is back" in r.getMessage() for r in caplog.records), 12)
        recorder = JackRecorder(0.5)
        try:
            names = {p.name for p in recorder.client.get_ports("steerbridge:")}
            assert names == {"steerbridge:out_L", "steerbridge:out_R"}
            assert {p.name for p in recorder.client.get_all_connections("steerbridge:out_R")} == {"system:playback_2"}
            recorder.connect(["steerbridge:out_L", "steerbridge:out_R"])
            recorder.recording = True
            assert wait_for(lambda: recorder.filled >= len(recorder.audio) - PERIOD, 5)
            assert np.abs(recorder.audio[:recorder.filled]).max() > 0.1, "JACK plays the ring again"
        finally:
            recorder.close()
        assert sum("went away" in r.getMessage() for r in caplog.records) == 1
        assert output.reconnects == 1  # type: ignore[attr-defined]
    finally:
        output.stop()


@pytest.mark.realtime
def test_serve_plays_its_music_to_the_jack_ports_it_connects(tmp_path, server, vectors_dir) -> None:
    from tests.test_serve_live import server_log_on_failure, start_serve, stop

    recorder = JackRecorder(3.0)
    proc, osc = start_serve(tmp_path, server.env, "--vectors", str(vectors_dir), "--audio-out", "jack",
                            "--jack-connect",
                            "system:playback_1,system:playback_2,test-recorder:in_L,test-recorder:in_R")
    try:
        with server_log_on_failure(tmp_path):
            status = osc.status()
            assert status["audio_out"] == "JACK (steerbridge:out_L/out_R)" and status["sample_rate"] == RATE
            assert {p.name for p in recorder.client.get_all_connections("steerbridge:out_L")} == {
                "system:playback_1", "test-recorder:in_L"}
            assert {p.name for p in recorder.client.get_all_connections("test-recorder:in_R")} == {"steerbridge:out_R"}
            recorder.recording = True
            assert wait_for(lambda: recorder.filled >= len(recorder.audio) - PERIOD, 30)
            heard = recorder.audio[:recorder.filled]
            assert np.abs(heard).max() > 0.01, "the music reaches the ports"
            np.testing.assert_array_equal(heard[:, 0], heard[:, 1])  # a mono model on both sides
    finally:
        code = stop(proc)
        osc.close()
        recorder.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    found = re.search(r"JACK: ports steerbridge:out_L and out_R at 48000 Hz, period 1024, latency ([\d.]+) ms", text)
    assert found, text
    # The speakers' ports' latency (the recorder's inputs have none) and a period.
    assert float(found.group(1)) == round(1000 * (PERIOD + speakers_latency()) / RATE, 1)
    for trouble in ("Traceback", "From cffi callback", "process callback failed"):
        assert trouble not in text, text


def serve_following_jack(tmp_path, *args: str) -> tuple[subprocess.Popen, Client, Callable[[], dict[str, Any]]]:
    """serve on tiny with JACK ports, following JACK transport (``--sync jack --transport
    follow``), and ``args``: the process, an OSC client, and a ``/status`` that answers {}
    when no reply comes within 0.5 s (for ``wait_for``). It does not wait for frames, as
    ``start_serve`` does: a stopped transport makes none."""
    probe = Client(0)
    port = probe.port
    probe.close()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--osc-port", str(port), "--quiet",
         "--audio-out", "jack", "--sync", "jack", "--transport", "follow", *args],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
    osc = Client(port)

    def status() -> dict[str, Any]:
        osc.send("/status")
        m = osc.recv(0.5)
        return json.loads(m.params[0]) if m is not None and m.address == "/status/json" else {}

    return proc, osc, status


@pytest.mark.realtime
def test_play_in_the_daw_enters_on_a_downbeat_at_the_jack_ports(tmp_path, server, vectors_dir) -> None:
    """JACK transport at 128 BPM from a timebase master in the test; serve follows it
    (--sync jack, --transport follow) and plays to JACK ports recorded in the test. The
    music goes to the speakers, as the master's would, and to the recorder, which takes
    each JACK cycle's samples with that cycle's transport frame; both reach the listener
    with the same latency, so the first non-silent sample recorded lies, in the master's
    own transport frames, on a downbeat within one 20 ms frame."""
    from tests.realparts import TimebaseMaster
    from tests.test_serve_live import server_log_on_failure, stop

    master = TimebaseMaster(128.0)
    recorder = JackRecorder(40.0)
    proc, osc, status = serve_following_jack(tmp_path, "--vectors", str(vectors_dir), "--jack-connect",
                                             "system:playback_1,system:playback_2,test-recorder:in_L,test-recorder:in_R")
    try:
        with server_log_on_failure(tmp_path):
            assert wait_for(lambda: status().get("clock", {}).get("source") == "jack" and proc.poll() is None, 120)
            assert {p.name for p in recorder.client.get_all_connections("test-recorder:in_L")} == {"steerbridge:out_L"}
            assert status()["audio_out"] == "JACK (steerbridge:out_L/out_R)"
            # Until the source's first reading the engine may have begun (see the report); from
            # the clock's stop on, the ports must be silent.
            assert wait_for(lambda: status().get("transport") == "stop", 30)
            time.sleep(0.5)
            recorder.recording = True
            time.sleep(1.0)
            assert not np.abs(recorder.audio[:recorder.filled]).any(), "silence while the transport is stopped"
            master.client.transport_start()
            assert wait_for(lambda: np.abs(recorder.audio[:recorder.filled]).max(initial=0.0) > 0.01, 30)
            assert status()["clock"]["bpm"] == pytest.approx(128.0, abs=0.01)  # the DAW's tempo, as the clock holds it
            heard = np.abs(recorder.audio[:recorder.filled, 0])
            first = int(np.argmax(heard > 1e-5))
            assert recorder.started_at is not None
            where = master.transport_frame_at(recorder.started_at + first)
            assert where is not None and where[1], "the music enters while the transport rolls"
            beat = master.beat_at(where[0])
            off_by = beat - 4 * round(beat / 4)  # from the nearest downbeat, in beats
            frame_beats = 0.02 * 128.0 / 60.0
            assert abs(off_by) <= frame_beats, f"first sound at beat {beat:.4f}, {off_by * 60 / 128 * 1000:.1f} ms off"
            # Stop in the DAW: silence within the fade plus one frame of the moment the
            # listener hears the transport stop (the recorder's sample whose cycle stopped).
            time.sleep(1.0)
            master.client.transport_stop()
            assert wait_for(lambda: status().get("transport") == "stop", 30)
            time.sleep(1.0)
            recorder.recording = False
            heard = np.abs(recorder.audio[:recorder.filled, 0]) > 1e-5
            rolling = [master.transport_frame_at(recorder.started_at + i) for i in range(0, recorder.filled, 64)]
            stopped_at = next(64 * i for i, r in enumerate(rolling) if 64 * i > first and r is not None and not r[1])
            last_sound = recorder.filled - 1 - int(np.argmax(heard[::-1]))
            tail_ms = (last_sound - stopped_at) / recorder.rate * 1000
            # JACK hands the output a whole period at a time: the one copied when the stop
            # comes plays out, so the bound is the fade, a frame and that period.
            fade_ms, period_ms = EngineSettings().fade_ms, recorder.client.blocksize / recorder.rate * 1000
            assert tail_ms <= fade_ms + 20.0 + period_ms, \
                f"sound {tail_ms:.1f} ms after the stop (fade {fade_ms:g} ms + a frame + a {period_ms:.1f} ms period)"
    finally:
        code = stop(proc)
        osc.close()
        recorder.close()
        master.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
