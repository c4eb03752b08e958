"""Stems into separate DAW tracks: each stem's JACK port pair appears and carries that
stem's audio, recorded back by JACK clients in the test (against ``jackd -d dummy``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.realparts import JackRecorder, JackServer, own_jack_server

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
    proc, osc = start_serve(tmp_path, server.env, "--vectors", str(vectors_dir), "--audio-out", "jack",
                            "--stem", "drums=punchy drums", "--stem-spares", "1")
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
            osc.send("/stem/remove", "keys")
            _wait_ports(client, "steerbridge:spare1_L", "steerbridge:keys_L")
    finally:
        code = stop(proc)
        osc.close()
        recorder.close()
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    for trouble in ("Traceback", "From cffi callback", "process callback failed"):
        assert trouble not in text, text
