"""The audio path's parts: ring buffer, recorder, effect chains."""

import subprocess
import sys
import wave

import numpy as np
import pedalboard
import pytest

from bridge.chains import ChainError, available_chains, load_chain
from bridge.recorder import WavRecorder
from bridge.ring import Ring


def test_ring_wraps_and_counts_underruns_only_when_audio_is_expected() -> None:
    ring = Ring(capacity=8, channels=2)
    out = np.empty((5, 2), np.float32)
    ring.read_into(out)
    assert ring.underruns == 0 and not out.any()  # before the first audio: silence, not an underrun
    ring.expect_audio = True
    for start in range(0, 30, 6):
        block = np.arange(start, start + 6, dtype=np.float32)[:, None].repeat(2, 1)
        assert ring.write(block) == start
        got = np.empty((6, 2), np.float32)
        assert ring.read_into(got) == 6
        assert np.array_equal(got, block)
    with pytest.raises(OverflowError):
        ring.write(np.zeros((9, 2), np.float32))
    assert ring.read_into(out) == 0 and ring.underruns == 1 and not out.any()
    assert ring.time_read(29) is not None and ring.time_read(30) is None


def test_recording_is_a_valid_wav_while_it_is_being_written(tmp_path) -> None:
    path = tmp_path / "r.wav"
    rec = WavRecorder(path, 48000, 2)
    rec.write(np.full((4800, 2), 0.25, np.float32))
    deadline = 100
    while rec.frames < 4800 and deadline:
        deadline -= 1
        __import__("time").sleep(0.01)
    with wave.open(str(path)) as w:  # read while still open for writing
        assert w.getnframes() == 4800 and w.getframerate() == 48000 and w.getnchannels() == 2
    rec.write(np.full((100, 2), 2.0, np.float32))  # clipped, not wrapped
    rec.close()
    rec.close()
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(data) == 4900 * 2 and data.max() == 32767
    with pytest.raises(ValueError, match=r"\.wav"):
        WavRecorder(tmp_path / "r.mp3", 48000, 2)


def test_chains_end_in_a_limiter_and_stream_without_gaps() -> None:
    for name in available_chains():
        board = load_chain(name)
        assert isinstance(board[-1], pedalboard.Limiter)
    board = load_chain("space")
    x = np.random.default_rng(0).standard_normal((2, 4800)).astype(np.float32)
    y = np.concatenate([board.process(x[:, i:i + 480], 48000, reset=False) for i in range(0, 4800, 480)], axis=1)
    assert y.shape == x.shape and np.abs(y).max() <= 1.0


@pytest.mark.parametrize(("text", "reason"), [
    ("effects: [{effect: Fuzzmaster}]", "unknown effect"),
    ("effects: [{effect: Reverb, room_size: loud}]", "Reverb"),
    ("effects: [{plugin: /nonexistent/Thing.vst3}]", "cannot load plugin"),
    ("effects: 3", "effects"),
])
def test_bad_chains_are_clear_errors(tmp_path, text, reason) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ChainError, match=reason):
        load_chain(str(tmp_path / "c.yaml"))
    with pytest.raises(ChainError, match="no paths"):
        load_chain("../../etc/passwd")


def test_devices_lists_audio_and_midi() -> None:
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "devices"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "audio outputs" in run.stdout and "MIDI inputs" in run.stdout and "Traceback" not in run.stderr


def test_audio_path_flushes_before_its_first_block_and_after() -> None:
    """A set stopped before any audio came out (Ctrl-C during start-up) must stop cleanly."""
    from bridge.engine import AudioPath

    ring = Ring(48000, 2)
    path = AudioPath(32000, 48000, ring, load_chain("clean"))
    path.flush()  # nothing pushed yet: nothing to do, and no error
    assert ring.fill == 0
    path.push(np.full((1, 3200), 0.1, np.float32))
    before = ring.fill
    path.flush()  # what the resampler held back comes out
    assert ring.fill > before
