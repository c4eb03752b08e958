"""The musical clock in a running server (tiny model, the clock output): quantised
changes land on the bar line at the output, the log says where and replays bit for bit;
the OSC source's tempo, beat, play and stop; /status/json's clock; a stale source."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from bridge.live.commands import Origin
from bridge.live.control import ControlEvent
from bridge.live.options import EngineSettings
from bridge.live.serve import ServeOptions, Server
from tests.oscclient import Client

BPM, METER = 240.0, "2/4"  # half-second bars: twenty of them are cheap
TEST = Origin("test")


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def serve(tiny, vectors_dir, tmp_path, **kw) -> Server:
    engine = kw.pop("engine", EngineSettings())
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs="off", bpm=BPM,
                           meter=METER, engine=engine, **kw)
    return Server(options, handle=tiny)


def test_a_quantised_recall_lands_on_the_next_bar_line_and_replays_bit_identically(tiny, vectors_dir, tmp_path):
    server = serve(tiny, vectors_dir, tmp_path, engine=EngineSettings(quantize="bar"),
                   record=str(tmp_path / "set.wav"), seed=4)
    rng = random.Random(18)
    rate = server.output.sample_rate
    per_frame = Fraction(rate, 50)
    per_bar = Fraction(60 * rate, 1) / Fraction(BPM) * 2
    recalls: list[tuple[ControlEvent, int | None]] = []
    server.control.add_listener(lambda e: recalls.append((e, server.clock.counter_at(e.arrived)))
                                if e.label == "/scene/recall" else None)
    server.start()
    try:
        for name, value in (("a", 4.0), ("b", -3.0)):
            server.commands.run("/steer/timbre", [value], TEST)
            server.commands.run("/scene/save", [name], TEST)
        assert wait_for(lambda: server.clock.snapshot.grid is not None)
        for i in range(20):
            time.sleep(rng.uniform(0.0, 0.5))  # a random moment in the bar
            server.commands.run("/scene/recall", ["ab"[i % 2]], Origin("test", arrived=time.monotonic()))
            assert wait_for(lambda: recalls[-1][0].placed is not None), f"recall {i} never landed"
    finally:
        server.stop()
    assert len(recalls) == 20
    grid = server.clock.snapshot.grid
    for event, heard in recalls:
        landed = event.landed
        assert landed is not None and event.quantize == "default"
        sample = landed["sample"]
        assert event.placed == sample  # where the engine predicted it is where its audio went
        bar_line = grid.sample_of(math.floor(grid.beat_at(sample) / 2) * 2)  # the bar line at or before it
        assert 0 <= sample - bar_line < per_frame, (landed, bar_line)  # on the bar line, within one frame
        assert landed["beat"] < 1.0 + float(per_frame / (per_bar / 2)) and landed["bar"] >= 1
        # the next bar line after the listener heard it arrive, or the one after when it came
        # too late for the audio already in the ring (ring, one codec chunk, a re-prime's top-up)
        assert heard is not None and 0 < sample - heard <= per_bar + 0.5 * rate, (heard, sample)
    log = tmp_path / "set.performance.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    logged = [r for r in lines if r.get("label") == "/scene/recall"]
    assert [r["sample"] for r in logged] == [e.landed["sample"] for e, _ in recalls]
    assert all(r["beat"] == pytest.approx(1.0, abs=0.08) and r["quantize"] == "default" for r in logged)
    assert lines[0]["clock"] == {"sync": "internal", "bpm": BPM, "meter": METER, "quantize": "bar",
                                 "transport": "follow"}
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--automation", str(log), "--out",
                          str(tmp_path / "replay.wav")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert "tokens identical to the performance" in run.stdout


def read_wav(path):
    import wave

    import numpy as np
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return data.astype(np.float32) / 32768.0


def test_osc_source_tempo_beat_stop_and_play_on_the_downbeat(tiny, vectors_dir, tmp_path):
    server = serve(tiny, vectors_dir, tmp_path, sync="osc", record=str(tmp_path / "set.wav"))
    server.start()
    client = Client(server.osc.port)
    try:
        assert wait_for(lambda: client.status()["clock"]["bar"] is not None)  # the first reading is placed
        status = client.status()["clock"]
        assert status["source"] == "osc" and status["meter"] == METER and status["playing"] is True
        assert set(status) >= {"source", "bpm", "bar", "beat", "meter", "playing", "health"}
        assert {"age_s", "stale"} <= set(status["health"])
        client.send("/transport/bpm", 150.0)
        assert wait_for(lambda: client.status()["clock"]["bpm"] == 150.0)
        client.send("/transport/beat", 40.0)  # a DAW's report far from our grid: a jump, one re-phase
        assert wait_for(lambda: client.status()["clock"]["relocations"] == 1)
        bar = client.status()["clock"]["bar"]
        assert bar in (21, 22)  # beat 40 of 2/4 is bar 21
        client.send("/transport/bpm", 2000.0)
        reply = client.recv(2.0)
        assert reply is not None and reply.address == "/error" and "outside 1..999" in reply.params[0]
        client.send("/transport/stop")
        assert wait_for(lambda: not client.status()["playing"] and not client.status()["clock"]["playing"])
        frames = client.status()["frames_generated"]
        time.sleep(0.3)
        status = client.status()
        assert status["frames_generated"] == frames  # stopped: no frames, only silence
        assert status["samples_played"] > 0
        client.send("/transport/play")
        assert wait_for(lambda: client.status()["frames_generated"] > frames + 10)
    finally:
        client.close()
        server.stop()
    lines = [json.loads(x) for x in (tmp_path / "set.performance.jsonl").read_text().splitlines()]
    played = [r for r in lines if r.get("transport") == "play"]
    assert played and played[-1]["beat"] == pytest.approx(1.0, abs=1e-4)  # entered on a downbeat (to the sample)
    audio = read_wav(tmp_path / "set.wav")
    enter = played[-1]["sample"]
    per_frame = server.output.sample_rate // 50
    heard = abs(audio).max(axis=1) > 0
    assert not heard[enter - 4 * per_frame:enter].any()  # silence up to the downbeat
    first = enter + int(heard[enter:].argmax())
    assert enter <= first < enter + per_frame  # and the music from it, within a frame


@pytest.mark.realtime
def test_a_stale_source_never_stops_the_sound_and_is_reported_once(tiny, vectors_dir, tmp_path, caplog, audio_clock):
    """On a clock this machine can keep up with now (``audio_clock``), so the underruns
    compared are the source's doing, not the load's."""
    server = serve(tiny, vectors_dir, tmp_path, sync="osc")
    server.start()
    client = Client(server.osc.port)
    try:
        def window(seconds: float, report: bool) -> tuple[int, int]:
            s0 = client.status()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if report:  # where our grid is: the reports agree with it, as a DAW's in sync would
                    clock = client.status()["clock"]
                    client.send("/transport/beat", clock["beat"] - 1 + 2 * (clock["bar"] - 1))
                time.sleep(0.25)
            s1 = client.status()
            return s1["underruns"] - s0["underruns"], s1["frames_generated"] - s0["frames_generated"]

        assert wait_for(lambda: client.status()["clock"]["bar"] is not None)  # the first reading is placed
        with caplog.at_level(logging.INFO, "steerbridge.clock"):
            idle = window(2.5, report=True)  # a DAW sending its beat four times a second
            gone = window(3.5, report=False)  # then it quits
            assert client.status()["clock"]["health"]["stale"] is True
            assert client.status()["playing"] is True
            back = window(1.0, report=True)
        # Underruns no more than idle (per second, with one to spare: the load is the machine's),
        # and the music went on: frames kept coming while the source was gone and after.
        assert gone[0] <= idle[0] * 3.5 / 2.5 + 1, (idle, gone)
        assert gone[1] > 0 and back[1] > 0, (gone, back)
        assert len([r for r in caplog.records if "no reading" in r.message]) == 1
        assert len([r for r in caplog.records if "is back" in r.message]) == 1
    finally:
        client.close()
        server.stop()


def test_bpm_in_the_prompt_follows_the_clock_on_the_next_bar_line(tiny, vectors_dir, tmp_path):
    server = serve(tiny, vectors_dir, tmp_path, prompt="techno at {bpm} bpm", log=str(tmp_path / "set.jsonl"))
    assert server.performance.prompt == "techno at 240 bpm"
    server.start()
    try:
        assert wait_for(lambda: server.clock.snapshot.grid is not None)
        server.commands.run("/transport/bpm", [128.0], TEST)
        assert wait_for(lambda: server.performance.prompt == "techno at 128 bpm")
        assert server.control.prompt == "techno at {bpm} bpm"  # asked: the template
    finally:
        server.stop()
    lines = [json.loads(x) for x in (tmp_path / "set.jsonl").read_text().splitlines()]
    assert lines[0]["prompt"] == "techno at 240 bpm"  # the replay starts from the filled prompt
    [event] = [r for r in lines if r.get("label") == "{bpm}"]
    assert event["changes"] == [{"kind": "prompt", "value": "techno at 128 bpm"}]
    assert event["beat"] == pytest.approx(1.0, abs=128 / 60 / 50)  # re-conditioned on a bar line


def test_each_stems_bpm_prompt_follows_the_clock_on_the_next_bar_line(tiny, vectors_dir, tmp_path):
    """A stem's own ``{bpm}`` prompt is re-conditioned on its row alone; a stem without one,
    and the set's --prompt (a stems server plays the stems' prompts), change nothing."""
    server = serve(tiny, vectors_dir, tmp_path, prompt="techno at {bpm} bpm", log=str(tmp_path / "set.jsonl"),
                   stems=["drums=drums at {bpm} bpm", "bass=deep bass"])
    prompts = server.performance.stream.prompts
    assert prompts[:2] == ["drums at 240 bpm", "deep bass"]
    server.start()
    try:
        assert wait_for(lambda: server.clock.snapshot.grid is not None)
        server.commands.run("/transport/bpm", [128.0], TEST)
        assert wait_for(lambda: server.performance.stream.prompts[0] == "drums at 128 bpm")
        time.sleep(0.5)
        assert server.performance.stream.prompts[1] == "deep bass"
        assert server.status()["stems"]["drums"]["prompt"] == "drums at {bpm} bpm"  # asked: the template
    finally:
        server.stop()
    lines = [json.loads(x) for x in (tmp_path / "set.jsonl").read_text().splitlines()]
    [event] = [r for r in lines if r.get("label") == "{bpm}"]
    assert event["changes"] == [{"kind": "prompt", "value": "drums at 128 bpm", "stream": 0, "stem": "drums"}]
    assert event["beat"] == pytest.approx(1.0, abs=128 / 60 / 50)  # re-conditioned on a bar line
