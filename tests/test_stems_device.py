"""Stems into separate DAW tracks on a multichannel sound card: a real serve playing two
stems through ALSA's pulse plugin into an 8-channel PulseAudio null sink, recorded back
from its monitor, each channel pair held to that stem's own recording (``--record``)."""

from __future__ import annotations

import os
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.realparts import ALSA_ORDER, pulse_sink

pytestmark = pytest.mark.realtime

RATE = 44100  # what PortAudio reports for ALSA's pulse device: the sink runs at it, so nothing resamples
CHANNELS = 8
SINK = "steerbridge_mc8"
BLOCK = 256
FRAMES = 20  # 0.4 s of the tiny model's audio


def _heard_frames(path: Path) -> np.ndarray:
    """The monitor's frames with the silence dropped: before and after the set, and where the
    card ran dry (this machine may generate slower than real time), so what is left is what
    the ring gave the card, in order."""
    heard = np.fromfile(path, "<i2")
    heard = heard[:len(heard) // CHANNELS * CHANNELS].reshape(-1, CHANNELS).astype(np.int32)
    assert not heard[:, 6:].any(), "channels past the stems' pairs are silent"
    return heard[heard.any(axis=1), :6]


def _place(block: np.ndarray, track: np.ndarray) -> int:
    """Where ``block`` is in ``track`` (to a 16-bit step), or -1."""
    for j in np.flatnonzero(np.abs(track[:len(track) - len(block) + 1] - block[0]) <= 1):
        if np.abs(track[j:j + len(block)] - block).max() <= 1:
            return int(j)
    return -1


def _recorded(tmp: Path) -> np.ndarray:
    """The mix's and each stem's recording, side by side as the card's channels should be."""
    columns = []
    for name in ("set.wav", "set.drums.wav", "set.bass.wav"):
        with wave.open(str(tmp / name)) as w:
            assert w.getframerate() == RATE
            columns.append(np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2).astype(np.int32))
    both = np.hstack(columns)
    return both[both.any(axis=1)]


def test_each_stem_plays_on_its_own_channel_pair_of_a_multichannel_card(tmp_path, pulse, vectors_dir) -> None:
    from tests.test_serve_live import server_log_on_failure, start_serve, stop

    with pulse_sink(pulse, SINK, CHANNELS, RATE) as env:
        capture = tmp_path / "monitor.raw"
        monitor = subprocess.Popen(["parecord", f"--device={SINK}.monitor", "--raw", "--format=s16le",
                                    f"--rate={RATE}", f"--channels={CHANNELS}", f"--channel-map={','.join(ALSA_ORDER)}",
                                    str(capture)], env={**os.environ, **env})
        proc, osc = start_serve(tmp_path, env, "--vectors", str(vectors_dir), "--audio-out", "pulse",
                                "--stem-channels", str(CHANNELS), "--stem", "drums=punchy drums",
                                "--stem", "bass=deep bass line", "--record", str(tmp_path / "set.wav"))
        try:
            with server_log_on_failure(tmp_path):
                status = osc.status()
                assert status["audio_channels"] == CHANNELS
                assert status["stems"]["drums"]["channels"] == [3, 4] and status["stems"]["bass"]["channels"] == [5, 6]
                assert status["stems"]["drums"]["ports"] is None
                deadline = time.monotonic() + 60
                while osc.status()["frames_generated"] < FRAMES:  # slower than real time on a busy machine
                    assert time.monotonic() < deadline, "the set stopped generating"
                    time.sleep(0.2)
        finally:
            code = stop(proc)
            osc.close()
            monitor.terminate()
            monitor.wait(10)
    text = (tmp_path / "serve.log").read_text()
    assert code == 0, text
    assert "pulse, 8 channels: mix 1-2, drums 3-4, bass 5-6; 7-8 silent" in text, text
    heard, recorded = _heard_frames(capture), _recorded(tmp_path)
    assert len(heard) > RATE // 10, f"the sink heard the set ({len(heard)} frames)"
    # Each block the sink heard, found in the mix's recording by its mix L: at that place every
    # recording (one ring, one sample counter) is what the block's channel pairs carried. Both
    # are 16-bit (PulseAudio's rounding and the recorder's may differ by a step). Where this
    # machine generated slower than real time, ALSA's pulse plugin dropped a few frames
    # recovering from the underrun, so blocks are placed one by one, and one across a drop is not found.
    found = [(i, j) for i in range(0, len(heard) - BLOCK, BLOCK) if (j := _place(heard[i:i + BLOCK, 0], recorded[:, 0])) >= 0]
    assert len(found) >= 0.8 * (len(heard) // BLOCK), f"{len(found)} of {len(heard) // BLOCK} blocks are the mix's"
    assert [j for _, j in found] == sorted(j for _, j in found), "in the order played"
    for i, j in found:
        played, wanted = heard[i:i + BLOCK], recorded[j:j + BLOCK]
        for column, what in enumerate(("mix L", "mix R", "drums L", "drums R", "bass L", "bass R")):
            assert np.abs(played[:, column] - wanted[:, column]).max() <= 1, f"channel {column + 1} carries the {what}"
    i, j = found[-1]
    assert np.abs(heard[i:i + BLOCK, 2] - recorded[j:j + BLOCK, 4]).max() > 100, "the stems differ: each match says something"
