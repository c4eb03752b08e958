"""``steerbridge serve`` end to end, as a performer runs it: a real process, OSC over UDP,
MIDI through a JACK virtual port, audio into a PulseAudio null sink recorded back from
its monitor, Ctrl-C, and the recording and performance log it leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mido
import numpy as np
import pytest
import rtmidi

from tests.oscclient import Client, message
from tests.realparts import SINK

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parent.parent
FRAME_SAMPLES = 640  # tiny model: 32 kHz, hop 640
MODEL_RATE = 32000


def start_serve(tmp: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, Client]:
    probe = Client(0)  # find a free port for the server
    port = probe.port
    probe.close()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--osc-port", str(port),
                             "--quiet", *args], cwd=tmp, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                            stdout=log, stderr=subprocess.STDOUT)
    client = Client(port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early:\n{(tmp / 'serve.log').read_text()}")
        # Poll at 5 Hz, not as fast as replies come: while loading the front answers at
        # once, and a tight loop trips the server's /status rate limit (100/s per sender),
        # which then refuses the test's own next /status.
        sent = time.monotonic()
        client.send("/status")
        m = client.recv(0.5)
        if m is not None and m.address == "/status/json" and json.loads(m.params[0]).get("frames_generated", 0) > 0:
            client.drain(0.1)  # stale replies to earlier polls must not answer the test's next /status
            return proc, client
        time.sleep(max(0.0, sent + 0.2 - time.monotonic()))
    proc.kill()
    pytest.fail(f"serve never answered /status:\n{(tmp / 'serve.log').read_text()}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    proc.wait(60)
    return proc.returncode


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:  # the stdlib reader is strict about headers
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return data.astype(np.float32) / 32768.0, w.getframerate()


def log_end(path: Path) -> dict:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["type"] == "header"
    end = [x for x in lines if x["type"] == "end"]
    assert end, "no end line: the engine did not stop cleanly"
    return end[0]


def expected_samples(frames: int, rate: int) -> int:
    return round(frames * FRAME_SAMPLES * rate / MODEL_RATE)


@contextmanager
def server_log_on_failure(tmp: Path) -> Iterator[None]:
    """A failure on CI must say what the server saw."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        log = tmp / "serve.log"
        raise AssertionError(f"{exc}\n--- serve.log ---\n{log.read_text() if log.exists() else '(none)'}") from exc


def test_live_set_with_osc_midi_and_a_real_sound_card(tmp_path, vectors_dir, jack, pulse) -> None:
    with server_log_on_failure(tmp_path):
        env = {**jack, **pulse, "XDG_DATA_HOME": str(tmp_path / "data")}
        os.environ.update(jack)  # this process's MIDI client talks to the same JACK server
        monitor = subprocess.Popen(["parecord", f"--device={SINK}.monitor", "--file-format=wav", "--channels=2",
                                    str(tmp_path / "monitor.wav")], env={**os.environ, **pulse})
        proc, osc = start_serve(tmp_path, env, "--vectors", str(vectors_dir), "--audio-out", "pulse", "--midi-in",
                                "virtual", "--midi-api", "jack", "--midi-map", "generic", "--record",
                                str(tmp_path / "set.wav"))
        try:
            status = osc.status()
            assert status["audio_out"] == "pulse" and status["midi"]["map"] == "generic"
            # OSC over UDP
            osc.send("/steer/timbre", 3.0)
            assert osc.status()["targets"]["timbre"] == 3.0
            # MIDI CC from a JACK virtual port, through the generic map: knob 1 (CC 21) -> first concept (tempo)
            backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
            names = [n for n in backend.get_output_names() if "steerbridge" in n]
            assert names, backend.get_output_names()
            with backend.open_output(names[0]) as out:
                out.send(mido.Message("control_change", control=21, value=127))
                deadline = time.monotonic() + 5
                while osc.status()["targets"]["tempo"] != 6.0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert osc.status()["targets"]["tempo"] == 6.0
                # MIDI learn asked over OSC, a knob moved, the map saved for the next set
                osc.send("/midi/learn", "/steer/timbre/knob")
                time.sleep(0.2)
                out.send(mido.Message("control_change", channel=2, control=77, value=0))
                deadline = time.monotonic() + 5
                while osc.status()["targets"]["timbre"] == 3.0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert osc.status()["targets"]["timbre"] != 3.0
                osc.send("/midi/save", "live-learned")
                saved = tmp_path / "data" / "steerbridge" / "mappings" / "live-learned.yaml"
                while not saved.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                text = saved.read_text()
                assert "cc: 77" in text and "/steer/timbre/knob" in text and "/steer/@1/knob" in text
                # garbage MIDI: unmapped CCs, notes, sysex, clock, other channels - all ignored
                before = osc.status()
                for msg in [mido.Message("control_change", control=99, value=5), mido.Message("note_on", note=1),
                            mido.Message("sysex", data=[0x7D, 1, 2]), mido.Message("clock"),
                            mido.Message("aftertouch", value=3), mido.Message("pitchwheel", pitch=8000)]:
                    out.send(msg)
                raw = rtmidi.MidiOut(rtmidi.API_UNIX_JACK)  # bytes no parser should accept
                raw.open_port(next(i for i, n in enumerate(raw.get_ports()) if "steerbridge" in n))
                for junk in ([0x10, 0x20], [0xF4], [0xB0, 0x15], [0xF7], [0xF0, 0x01, 0x90]):
                    raw.send_message(junk)
                raw.close_port()
                time.sleep(0.5)
            # garbage OSC: a malformed packet and a NaN
            osc.raw(b"\xff\xfe not osc")
            osc.raw(message("/steer/timbre", float("nan")))
            time.sleep(0.3)
            after = osc.status()
            assert proc.poll() is None
            assert after["targets"] == before["targets"] and after["errors"] == before["errors"] + 2
            assert after["midi"]["ignored"] >= 6
            # Both knob changes reach the ears: the first sample made under each passes the reader.
            # The engine makes audio as fast as the card takes it, and a sound server starved by a
            # loaded machine takes it slowly, so wait for that (bounded), not a fixed time.
            deadline = time.monotonic() + 20
            while osc.status()["control_latency_ms"]["n"] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            flowing = osc.status()
            assert flowing["control_latency_ms"]["n"] >= 2
            time.sleep(2.0)
            status = osc.status()
            # The music keeps flowing: the sound card got real audio for at least half of what it asked
            # for in those 2 s. Counted against the card's own demand, not the wall clock: on a loaded
            # machine PulseAudio itself is starved and asks for less (CI saw 12 frames in 2 s that way).
            asked = status["samples_requested"] - flowing["samples_requested"]
            played = status["samples_played"] - flowing["samples_played"]
            assert asked > 0 and played >= 0.5 * asked, {"asked": asked, "played": played,
                                                         "underruns": status["underruns"]}
        finally:
            code = stop(proc)
            monitor.send_signal(signal.SIGINT)
            monitor.wait(10)
            osc.close()
        assert code == 0, (tmp_path / "serve.log").read_text()
        # the recording is valid and as long as the frames generated
        audio, rate = read_wav(tmp_path / "set.wav")
        end = log_end(tmp_path / "set.performance.jsonl")
        assert abs(len(audio) - expected_samples(end["frames"], rate)) <= 2
        assert np.sqrt(np.mean(audio ** 2)) > 1e-3
        # and sound really arrived at the sound card
        heard, _ = read_wav(tmp_path / "monitor.wav")
        assert len(heard) > 0.5 * rate and np.sqrt(np.mean(heard ** 2)) > 1e-3


def test_performance_replays_bit_identically(tmp_path, vectors_dir) -> None:
    proc, osc = start_serve(tmp_path, {}, "--vectors", str(vectors_dir), "--audio-out", "none", "--record",
                            str(tmp_path / "set.wav"), "--seed", "3")
    try:
        for value in (2.0, -3.0, 5.0):
            osc.send("/steer/timbre", value)
            time.sleep(0.3)
        osc.send("/prompt", "slow dark ambient pads")
        time.sleep(0.3)
        osc.send("/steer/tempo/knob", 0.9)
        osc.send("/gen/temperature", 0.9)
        time.sleep(0.5)
    finally:
        assert stop(proc) == 0, (tmp_path / "serve.log").read_text()
        osc.close()
    log = tmp_path / "set.performance.jsonl"
    end = log_end(log)
    events = [json.loads(x) for x in log.read_text().splitlines() if '"event"' in x]
    assert len(events) == 6 and all("step" in e for e in events)
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--automation", str(log), "--out",
                          str(tmp_path / "replay.wav")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert "tokens identical to the performance" in run.stdout
    audio, rate = read_wav(tmp_path / "replay.wav")
    assert len(audio) == end["frames"] * FRAME_SAMPLES and rate == MODEL_RATE


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_recording_survives_sigterm_and_even_sigkill(tmp_path, vectors_dir, sig) -> None:
    proc, osc = start_serve(tmp_path, {}, "--vectors", str(vectors_dir), "--audio-out", "none", "--record",
                            str(tmp_path / "set.wav"))
    time.sleep(1.5)
    osc.close()
    code = stop(proc, sig)
    audio, rate = read_wav(tmp_path / "set.wav")
    assert len(audio) > 0.5 * rate
    if sig == signal.SIGTERM:
        assert code == 0
        assert abs(len(audio) - expected_samples(log_end(tmp_path / "set.performance.jsonl")["frames"], rate)) <= 2


def test_missing_audio_device_falls_back_with_one_line(tmp_path, vectors_dir) -> None:
    proc, osc = start_serve(tmp_path, {}, "--vectors", str(vectors_dir), "--audio-out", "no-such-card", "--duration",
                            "30")
    try:
        with server_log_on_failure(tmp_path):
            assert osc.status()["audio_out"] == "none (clock)"
    finally:
        stop(proc)
        osc.close()
    text = (tmp_path / "serve.log").read_text()
    assert "playing on a silent clock instead" in text and "Traceback" not in text
