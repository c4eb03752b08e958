"""Stems into separate DAW tracks: each stem's JACK port pair appears and carries that
stem's audio, recorded back by JACK clients in the test (against ``jackd -d dummy``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.realparts import JackRecorder, JackServer, own_jack_server, wait_for

jack = pytest.importorskip("jack")

RATE = 48000
PERIOD = 1024


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[JackServer]:
    yield from own_jack_server(tmp_path, monkeypatch, f"steerbridge-stems-{os.getpid()}", period=PERIOD, rate=RATE)


def test_each_stem_has_its_own_ports_and_they_carry_its_audio(tmp_path, server, vectors_dir) -> None:
    from tests.test_serve_live import server_log_on_failure, start_serve, stop

    recorders = {name: JackRecorder(1.5, name=f"rec-{name}") for name in ("drums", "bass")}
    mix = JackRecorder(1.5, name="rec-mix")
    proc, osc = start_serve(tmp_path, server.env, "--vectors", str(vectors_dir), "--audio-out", "jack",
                            "--stem", "drums=punchy drums", "--stem", "bass=deep bass line")
    try:
        with server_log_on_failure(tmp_path):
            status = osc.status()
            assert status["audio_out"] == "JACK (steerbridge:out_L/out_R and 2 stem pairs)"
            assert status["stems"]["bass"]["ports"] == ["bass_L", "bass_R"]
            ports = {p.name for p in mix.client.get_ports("steerbridge:", is_output=True)}
            assert ports == {f"steerbridge:{n}" for n in ("out_L", "out_R", "drums_L", "drums_R", "bass_L", "bass_R")}
            for name, recorder in recorders.items():
                recorder.connect([f"steerbridge:{name}_L", f"steerbridge:{name}_R"])
            mix.connect(["steerbridge:out_L", "steerbridge:out_R"])
            for recorder in (*recorders.values(), mix):
                recorder.recording = True
            deadline = time.monotonic() + 30
            while any(r.filled < len(r.audio) - PERIOD for r in (*recorders.values(), mix)):
                assert time.monotonic() < deadline, "the ports stopped carrying audio"
                time.sleep(0.05)
            heard = {name: r.audio[:r.filled] for name, r in recorders.items()}
            for name, audio in heard.items():
                assert np.abs(audio).max() > 0.01, f"{name}'s ports carry its music"
            n = min(len(a) for a in heard.values())
            assert not np.allclose(heard["drums"][:n], heard["bass"][:n]), "each pair carries its own stem"
            assert np.abs(mix.audio[:mix.filled]).max() > 0.01, "the mix plays on out_L/out_R"
    finally:
        code = stop(proc)
        osc.close()
        for recorder in (*recorders.values(), mix):
            recorder.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    for trouble in ("Traceback", "From cffi callback", "process callback failed"):
        assert trouble not in text, text


_SEND_MIDI = """
import sys, time, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "map-sender")
out.open_port(next(i for i, n in enumerate(out.get_ports()) if "steerbridge" in n))
out.send_message([int(b) for b in sys.argv[1:]])
time.sleep(0.5)  # JACK delivers in the next cycles: stay a client until then
out.close_port()
out.delete()
"""


def send_jack_midi(env: dict[str, str], message: list[int]) -> None:
    """One MIDI message from a JACK MIDI client in a process of its own: a JACK MIDI client
    made in the test process, after earlier tests' JACK servers came and went, once crashed
    it (a segfault in the full suite, never alone)."""
    sent = subprocess.run([sys.executable, "-c", _SEND_MIDI, *map(str, message)], env={**os.environ, **env},
                          timeout=30, capture_output=True, text=True)
    assert sent.returncode == 0, f"the JACK MIDI sender failed: {sent.stderr[-2000:]}"


def _own_ports(client) -> set[str]:
    return {p.name for p in client.get_ports("steerbridge:", is_output=True)}


def _wait_ports(client, present: str, absent: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not (present in (ports := _own_ports(client)) and absent not in ports):
        assert time.monotonic() < deadline, f"waited for {present} (and no {absent}); ports: {sorted(ports)}"
        time.sleep(0.05)


def test_a_stem_added_on_jack_gets_a_spare_rows_ports_and_gives_them_back(tmp_path, server, vectors_dir) -> None:
    from tests.test_serve_live import server_log_on_failure, start_serve, stop

    recorder = JackRecorder(3.0, name="rec-keys")  # longer than a bar: the stem enters on the next one
    # One MIDI map for the whole set, keys included before it plays: channel 3 is keys'.
    (tmp_path / "map.yaml").write_text("stems: {drums: 10, keys: 3}\ncontrols:\n  - {cc: 21, target: /steer/@1/knob}\n")
    proc, osc = start_serve(tmp_path, server.env, "--vectors", str(vectors_dir), "--audio-out", "jack",
                            "--stem", "drums=punchy drums", "--stem-spares", "1", "--midi-in", "virtual",
                            "--midi-api", "jack", "--midi-map", str(tmp_path / "map.yaml"))
    try:
        with server_log_on_failure(tmp_path):
            client = recorder.client
            assert _own_ports(client) == {f"steerbridge:{n}" for n in (
                "out_L", "out_R", "drums_L", "drums_R", "spare1_L", "spare1_R")}
            osc.send("/stem/add", "keys", "soft piano")
            _wait_ports(client, "steerbridge:keys_L", "steerbridge:spare1_L")
            recorder.connect(["steerbridge:keys_L", "steerbridge:keys_R"])
            recorder.recording = True
            deadline = time.monotonic() + 30
            while recorder.filled < len(recorder.audio) - PERIOD:
                assert time.monotonic() < deadline, "the added stem's ports stopped carrying audio"
                time.sleep(0.05)
            assert np.abs(recorder.audio[:recorder.filled]).max() > 0.01, "the added stem plays on its ports"
            send_jack_midi(server.env, [0xB2, 21, 127])  # CC 21 on channel 3: keys' first knob to the top
            deadline = time.monotonic() + 10
            while not any(osc.status()["stems"]["keys"]["targets"].values()):
                assert time.monotonic() < deadline, "the map's control for keys did not reach keys"
                time.sleep(0.1)
            stems = osc.status()["stems"]
            assert max(stems["keys"]["targets"].values()) > 0 and not any(stems["drums"]["targets"].values())
            osc.send("/stem/remove", "keys")
            _wait_ports(client, "steerbridge:spare1_L", "steerbridge:keys_L")
    finally:
        code = stop(proc)
        osc.close()
        recorder.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    said = "MIDI map 'map': stem 'keys' is not in the set (stems: drums); its controls act once /stem/add keys"
    assert text.count(said) == 1, text
    for trouble in ("Traceback", "From cffi callback", "process callback failed"):
        assert trouble not in text, text


def _first_sound_beat(recorder: JackRecorder, master) -> float:
    """The master's beat at the first non-silent sample the recorder took (in its cycle's
    transport frames: the recorder and the speakers hear a cycle together)."""
    heard = np.abs(recorder.audio[:recorder.filled, 0])
    assert heard.max(initial=0.0) > 1e-5, f"{recorder.client.name} heard nothing"
    first = int(np.argmax(heard > 1e-5))
    assert recorder.started_at is not None
    where = master.transport_frame_at(recorder.started_at + first)
    assert where is not None and where[1], "the music enters while the transport rolls"
    return master.beat_at(where[0])


@pytest.mark.realtime
def test_stems_start_together_on_a_downbeat_of_the_daws_clock_and_an_added_one_on_a_later_downbeat(
        tmp_path, server, vectors_dir) -> None:
    """JACK transport at 128 BPM from a timebase master in the test; serve follows it with
    two stems and a spare row. Play in the DAW: both stems' ports are silent before and
    their first sound is on the same downbeat (within a 20 ms frame). ``/stem/add`` while
    rolling: the new stem's first sound, on the spare row's ports (recorded from before the
    add: the connection survives the rename), is on a later downbeat."""
    from tests.realparts import TimebaseMaster
    from tests.test_jack_output import serve_following_jack
    from tests.test_serve_live import server_log_on_failure, stop

    master = TimebaseMaster(128.0)
    recorders = {name: JackRecorder(40.0, name=f"rec-{name}") for name in ("drums", "bass", "keys")}
    proc, osc, status = serve_following_jack(
        tmp_path, "--vectors", str(vectors_dir), "--jack-connect", "system:playback_1,system:playback_2",
        "--stem", "drums=punchy drums", "--stem", "bass=deep bass line", "--stem-spares", "1")
    frame_beats = 0.02 * 128.0 / 60.0
    try:
        with server_log_on_failure(tmp_path):
            assert wait_for(lambda: status().get("clock", {}).get("source") == "jack" and proc.poll() is None, 120)
            assert wait_for(lambda: status().get("transport") == "stop", 30)
            spare = next(p.name for p in recorders["keys"].client.get_ports("steerbridge:spare", is_output=True))
            for name, recorder in recorders.items():
                pair = spare[len("steerbridge:"):-len("_L")] if name == "keys" else name
                recorder.connect([f"steerbridge:{pair}_L", f"steerbridge:{pair}_R"])
            time.sleep(0.5)
            for recorder in recorders.values():
                recorder.recording = True
            time.sleep(1.0)
            for name in ("drums", "bass"):
                assert not np.abs(recorders[name].audio[:recorders[name].filled]).any(), \
                    f"{name} is silent while the transport is stopped"
            underruns_before = osc.status()["underruns"]

            def late_by_at_most() -> float:
                """In beats: an underrun on a busy machine plays at most a period of silence
                that delays everything after it, the grid's entries included (the grid
                follows the source back within a few readings)."""
                return (osc.status()["underruns"] - underruns_before) * PERIOD / RATE * 128.0 / 60.0

            master.client.transport_start()
            assert wait_for(lambda: all(np.abs(recorders[n].audio[:recorders[n].filled]).max(initial=0.0) > 0.01
                                        for n in ("drums", "bass")), 30)
            beats = {name: _first_sound_beat(recorders[name], master) for name in ("drums", "bass")}
            slack = late_by_at_most()
            for name, beat in beats.items():
                off_by = beat - 4 * round(beat / 4)
                assert -frame_beats <= off_by <= frame_beats + slack, \
                    f"{name}'s first sound at beat {beat:.4f}, not on a downbeat ({slack:.3f} beats of underruns)"
            # One batch, one ring: the stems' first samples are the same output sample.
            assert abs(beats["drums"] - beats["bass"]) <= 1 / RATE * 128.0 / 60.0, f"the stems start apart: {beats}"
            assert not np.abs(recorders["keys"].audio[:recorders["keys"].filled]).any(), "the spare row is silent"
            osc.send("/stem/add", "keys", "soft piano")
            assert wait_for(lambda: np.abs(recorders["keys"].audio[:recorders["keys"].filled]).max(initial=0.0) > 0.01,
                            30), "the added stem never played"
            assert "keys" in osc.status()["stems"]
            keys = _first_sound_beat(recorders["keys"], master)
            slack = late_by_at_most()
            off_by = keys - 4 * round(keys / 4)
            assert -frame_beats <= off_by <= frame_beats + slack, \
                f"the added stem's first sound at beat {keys:.4f}, not on a downbeat ({slack:.3f} beats of underruns)"
            assert keys >= beats["drums"] + 4 - frame_beats, "the added stem enters on a later bar"
    finally:
        code = stop(proc)
        osc.close()
        for recorder in recorders.values():
            recorder.close()
        master.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    for trouble in ("Traceback", "From cffi callback", "process callback failed"):
        assert trouble not in text, text
