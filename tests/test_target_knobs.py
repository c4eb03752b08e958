"""Target knobs and the tempo lock in a running server (tiny model, the clock output): a
target drives alpha from the engine thread through the timeline, /status/json and the log
show the loop, the log replays bit for bit, a plain write takes the knob back, the lock
reports its state, and bad targets change nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from bridge.live.commands import Origin
from bridge.live.control import ControlError
from bridge.live.options import EngineSettings
from bridge.live.serve import ServeOptions, Server
from tests import realparts

TEST = Origin("test")


def wait_for(predicate, timeout: float = 20.0) -> bool:
    return realparts.wait_for(predicate, timeout, every=0.02)


def serve(tiny, vectors_dir, tmp_path, **kw) -> Server:
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs="off", bpm=240.0,
                           **kw)
    return Server(options, handle=tiny)


def test_a_target_drives_alpha_shows_in_status_and_the_log_replays_bit_identically(tiny, vectors_dir, tmp_path):
    server = serve(tiny, vectors_dir, tmp_path, record=str(tmp_path / "set.wav"), seed=3)
    server.start()
    try:
        # Far above any centroid the noise of random weights has: the loop pushes alpha up
        # every beat until the bound, then says so and holds the alpha whose reading came
        # nearest (the bound, or short of it where random weights' centroid turns over).
        server.commands.run("/steer/timbre/target", [15000.0], TEST)
        assert wait_for(lambda: server.status()["target_knobs"].get("timbre", {}).get("updates", 0) >= 4)
        loop = server.status()["target_knobs"]["timbre"]
        assert loop["setpoint"] == 15000.0 and loop["unit"] == "Hz" and math.isfinite(loop["measured"])
        played = server.status()["alphas"]["timbre"]
        assert played > 0.0  # the played alpha followed the loop
        hi = server.control.concepts["timbre"].alpha_range[1]
        assert wait_for(lambda: server.status()["target_knobs"]["timbre"]["mode"] == "out of range")
        loop = server.status()["target_knobs"]["timbre"]
        held = loop["held"]
        assert 0.0 < held <= hi  # what it holds, in /status: the bound, or short of it
        assert wait_for(lambda: server.status()["target_knobs"]["timbre"]["alpha"] == held)  # at the rate limit
        after = server.status()["target_knobs"]["timbre"]["updates"]
        assert wait_for(lambda: server.status()["target_knobs"]["timbre"]["updates"] >= after + 3)
        still = server.status()["target_knobs"]["timbre"]
        assert still["mode"] == "out of range" and still["alpha"] == still["held"] == held  # it holds: no fighting
        assert server.status()["alphas"]["timbre"] == held
        server.commands.run("/steer/timbre", [0.5], TEST)  # a plain write: a force knob again
        assert wait_for(lambda: "timbre" not in server.status()["target_knobs"])
        time.sleep(0.3)
    finally:
        server.stop()
    log = tmp_path / "set.performance.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    set_by_loop = [r for r in lines if r.get("source") == "target loop"]
    assert set_by_loop and all(r["loop"]["setpoint"] == 15000.0 and r["changes"][0]["concept"] == "timbre"
                               for r in set_by_loop)
    assert any(r.get("target") == {"concept": "timbre", "setpoint": 15000.0} for r in lines)
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--automation", str(log), "--out",
                          str(tmp_path / "replay.wav")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert "tokens identical to the performance" in run.stdout


def test_the_lock_and_the_knob_and_bad_targets(tiny, vectors_dir, tmp_path):
    server = serve(tiny, vectors_dir, tmp_path, engine=EngineSettings(tempo_lock=True))
    server.start()
    try:
        assert wait_for(lambda: server.status()["lock"] != "off")  # serve --tempo-lock: on from the start
        assert "tempo" in server.status()["target_knobs"]
        server.commands.run("/steer/tempo/target", [100.0], TEST)  # a setpoint of its own ends the lock
        assert wait_for(lambda: server.status()["lock"] == "off"
                        and server.status()["target_knobs"].get("tempo", {}).get("setpoint") == 100.0)
        server.commands.run("/sync/lock", [1], TEST)
        assert wait_for(lambda: server.status()["lock"] != "off")
        server.commands.run("/sync/lock", [0], TEST)
        assert wait_for(lambda: server.status()["lock"] == "off" and "tempo" not in server.status()["target_knobs"])
        server.commands.run("/steer/tempo/target/knob", [0.5], TEST)  # halfway over 60..180 BPM
        assert wait_for(lambda: server.status()["target_knobs"].get("tempo", {}).get("setpoint") == 120.0)
        server.commands.run("/steer/tempo/target/off", [], TEST)
        assert wait_for(lambda: "tempo" not in server.status()["target_knobs"])
        for address, args in (("/steer/tempo/target", [math.nan]), ("/steer/tempo/target", [1000.0]),
                              ("/steer/tempo/target", ["fast"]), ("/steer/tempo/target/knob", [1.5]),
                              ("/sync/lock", [2])):
            with pytest.raises(ControlError):
                server.commands.run(address, args, TEST)
        time.sleep(0.2)
        assert "tempo" not in server.status()["target_knobs"]  # refused: nothing changed
    finally:
        server.stop()


def test_the_lock_without_a_tempo_vector_is_refused_in_one_line(tiny, vectors_dir, tmp_path):
    from steering_core.errors import UserError

    options = ServeOptions(model="tiny", vectors=[str(vectors_dir / "timbre.safetensors")], osc_port=0,
                           audio_out="none", status_line=False, cuda_graphs="off",
                           engine=EngineSettings(tempo_lock=True))
    with pytest.raises(UserError, match="no tempo vector"):
        Server(options, handle=tiny)
