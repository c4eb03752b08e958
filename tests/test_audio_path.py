"""The audio path's parts: ring buffer, recorder, effect chains."""

import subprocess
import sys
import wave

import numpy as np
import pedalboard
import pytest

from bridge.live.chains import ChainError, available_chains, load_chain
from bridge.live.recorder import WavRecorder
from bridge.live.ring import Ring


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


def _riff_chunks(path) -> dict[bytes, bytes]:
    """Every chunk of a RIFF file by id, read by walking the file (not by our writer's offsets)."""
    import struct

    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    chunks, at = {}, 12
    while at < len(raw):
        cid, size = raw[at:at + 4], struct.unpack_from("<I", raw, at + 4)[0]
        chunks[cid] = raw[at + 8:at + 8 + size]
        at += 8 + size + size % 2
    assert at == len(raw)
    return chunks


def test_a_recording_that_starts_later_says_where_in_a_bext_chunk(tmp_path) -> None:
    """A stem added while the set plays: a DAW places its file at the bext TimeReference."""
    import struct
    import time

    path = tmp_path / "set.keys.wav"
    starts_at = 3 * 2**32 + 123_456  # past 32 bits: the high word is used
    rec = WavRecorder(path, 48000, 2, starts_at=starts_at, description="steerbridge stem keys")
    rec.write(np.full((4800, 2), 0.25, np.float32))
    deadline = time.monotonic() + 5
    while rec.frames < 4800 and time.monotonic() < deadline:
        time.sleep(0.01)
    with wave.open(str(path)) as w:  # valid while being written
        assert w.getnframes() == 4800
    rec.rewrite_tail(np.full((100, 2), -0.25, np.float32))
    rec.close()
    chunks = _riff_chunks(path)
    bext = chunks[b"bext"]
    assert len(bext) == 602 and bext[:21] == b"steerbridge stem keys" and bext[256:267] == b"steerbridge"
    low, high, version = struct.unpack_from("<IIH", bext, 338)
    assert high * 2**32 + low == starts_at and version == 1
    data = np.frombuffer(chunks[b"data"], "<i2").reshape(-1, 2)
    assert len(data) == 4800 and (data[:4700] > 0).all() and (data[4700:] < 0).all()
    plain = WavRecorder(tmp_path / "set.wav", 48000, 2)  # the mix and a one-stream set: a plain WAV
    plain.close()
    assert b"bext" not in _riff_chunks(tmp_path / "set.wav") and (tmp_path / "set.wav").stat().st_size == 44


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
    from bridge.live.audio_path import AudioPath

    ring = Ring(48000, 2)
    path = AudioPath(32000, 48000, ring, load_chain("clean"))
    path.flush()  # nothing pushed yet: nothing to do, and no error
    assert ring.fill == 0
    path.push(np.full((1, 3200), 0.1, np.float32))
    before = ring.fill
    path.flush()  # what the resampler held back comes out
    assert ring.fill > before


class _FillingDisk:
    """A file that runs out of space after ``room`` bytes, as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self._f, self.room = f, room

    def write(self, data: bytes) -> int:
        if self._f.tell() + len(data) > self.room:
            self._f.write(data[: max(0, self.room - self._f.tell())])  # a partial block, as the kernel does
            raise OSError(28, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_a_full_disk_stops_the_recording_once_keeps_memory_flat_and_the_file_valid(tmp_path, caplog) -> None:
    import time

    path = tmp_path / "r.wav"
    rec = WavRecorder(path, 48000, 2)
    rec._file = _FillingDisk(rec._file, 44 + 4 * 4800 * 3 + 100)  # room for three blocks and a bit
    block = np.full((4800, 2), 0.25, np.float32)
    for _ in range(5):
        rec.write(block)
    deadline = time.monotonic() + 5
    while rec.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.failure is not None
    for _ in range(1000):  # 100 s of audio after the disk filled
        rec.write(block)
    assert rec._queue.qsize() == 0  # nothing piles up in memory
    rec.close()
    with wave.open(str(path)) as w:
        assert w.getnframes() == rec.frames == 3 * 4800
    assert path.stat().st_size == 44 + 4 * 3 * 4800  # the half-written block was cut off
    assert len([r for r in caplog.records if "stopped" in r.getMessage()]) == 1
    assert rec.summary().startswith(f"{path} holds 14400 frames (0.30 s)") and "No space left" in rec.summary()


def test_a_slow_disk_drops_blocks_instead_of_queueing_them(tmp_path) -> None:
    rec = WavRecorder(tmp_path / "r.wav", 48000, 2)
    rec.max_queued_frames = 4800
    gate = __import__("threading").Event()
    real = rec._file

    class Slow:
        def write(self, data):
            gate.wait(5)
            return real.write(data)

        def __getattr__(self, name):
            return getattr(real, name)

    rec._file = Slow()
    block = np.zeros((4800, 2), np.float32)
    for _ in range(50):
        rec.write(block)
    assert rec._queue.qsize() <= 1 and rec.dropped_frames >= 48 * 4800
    gate.set()
    rec.close()
    assert "were not recorded" in rec.summary()


def test_the_ring_refuses_a_second_writer_while_one_is_writing() -> None:
    import threading

    ring = Ring(4800, 2)
    inside, release = threading.Event(), threading.Event()

    class SlowBlock(np.ndarray):
        """A block whose copy into the ring waits: a write that is under way."""

        def __getitem__(self, key):
            inside.set()
            release.wait(5)
            return np.asarray(self).__getitem__(key)

    block = np.zeros((480, 2), np.float32).view(SlowBlock)
    writer = threading.Thread(target=ring.write, args=(block,), name="engine")
    writer.start()
    assert inside.wait(5)
    try:
        with pytest.raises(RuntimeError, match="one writer"):
            ring.write(np.zeros((10, 2), np.float32))
    finally:
        release.set()
        writer.join(5)
    assert ring.written == 480  # the first write completed; the refused one changed nothing
    ring.write(np.zeros((10, 2), np.float32))  # one at a time, from any thread, is fine
    assert ring.written == 490


# --- outputs: a registry by name; the channel count and rate come from the output ----------
class FakeOutput:
    """An output of any format that only records what it was handed."""

    def __init__(self, rest: str, *, sample_rate: int = 24000, channels: int = 1) -> None:
        self.rest = rest
        self.name = f"fake ({rest})"
        self.sample_rate = sample_rate
        self.channels = channels
        self.latency_s = 0.0
        self.ring: Ring | None = None
        self.stopped = False

    def start(self, ring: Ring) -> None:
        self.ring = ring

    def stop(self) -> None:
        self.stopped = True


def test_an_unknown_output_is_one_line_naming_the_ones_there_are() -> None:
    from bridge.live.outputs import OutputError, output_factory

    with pytest.raises(OutputError) as caught:
        output_factory("alsa-loop")
    message = str(caught.value)
    assert "\n" not in message and "unknown output 'alsa-loop'" in message and "device, jack, none" in message


def test_audio_out_names_an_output_or_else_a_sound_card(monkeypatch) -> None:
    from bridge.live import outputs

    monkeypatch.setitem(outputs.OUTPUTS, "fake", FakeOutput)
    parse = outputs.parse_output_spec
    assert parse("none") == ("none", "") and parse("fake") == ("fake", "") and parse("fake:a:b") == ("fake", "a:b")
    assert parse("device:3") == ("device", "3")
    for card in ("default", "3", "hw:0,0", "USB Audio", "fakeish"):
        assert parse(card) == ("device", card)


def test_an_output_that_cannot_open_falls_back_to_the_clock_with_one_line(monkeypatch, caplog) -> None:
    from bridge.live import outputs

    def broken(rest: str) -> outputs.Output:
        raise outputs.OutputError(f"no audio output device {rest!r}")

    monkeypatch.setitem(outputs.OUTPUTS, "device", broken)
    out = outputs.open_output("USB Audio")
    assert isinstance(out, outputs.ClockOutput) and (out.sample_rate, out.channels) == (48000, 2)
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "'USB Audio'" in line and "silent clock" in line


def test_the_output_sets_the_rate_and_channels_of_the_path_the_ring_and_the_recording(tmp_path) -> None:
    from bridge.live.audio_path import RING_SECONDS, STAGE_HEADROOM_S, AudioPath

    for channels in (1, 2, 4):
        output = FakeOutput("", sample_rate=24000, channels=channels)
        path = AudioPath.for_output(output, 32000, load_chain("clean"), tmp_path / f"{channels}.wav")
        assert path.ring.channels == channels and path.device_rate == 24000
        assert path.ring.capacity == (RING_SECONDS + STAGE_HEADROOM_S) * 24000
        for model_channels in (1, 2):
            path.push(np.full((model_channels, 3200), 0.1, np.float32))
        assert path.ring.fill > 0
        block = np.empty((path.ring.fill, channels), np.float32)
        path.ring.read_into(block)
        assert np.allclose(block, block[:, :1])  # one mix on every side
        assert path.recorder is not None
        path.recorder.close()
        with wave.open(str(tmp_path / f"{channels}.wav")) as w:
            assert (w.getnchannels(), w.getframerate()) == (channels, 24000)


def test_serve_plays_on_an_output_registered_by_name(monkeypatch, tiny, vectors_dir, tmp_path) -> None:
    """A fake mono 24 kHz output, registered as one more entry, is what serve's wiring opens,
    starts on its ring, shows in /status and stops."""
    import time

    from bridge.live import outputs
    from bridge.live.serve import ServeOptions, Server

    opened: list[FakeOutput] = []

    def fake(rest: str) -> FakeOutput:
        opened.append(FakeOutput(rest))
        return opened[-1]

    monkeypatch.setitem(outputs.OUTPUTS, "fake", fake)
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="fake:left",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False)
    server = Server(options, handle=tiny)
    (output,) = opened
    assert server.output is output and output.rest == "left"
    assert server.ring.channels == 1 and server.engine.path.device_rate == 24000
    server.start()
    try:
        assert output.ring is server.ring
        deadline = time.monotonic() + 30
        while server.ring.written == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.ring.written > 0
        status = server.status()
        assert status["audio_out"] == "fake (left)" and status["sample_rate"] == 24000
    finally:
        server.stop()
    assert output.stopped


def test_a_stop_fades_the_buffered_audio_at_once_and_the_recording_plays_what_was_heard(tmp_path) -> None:
    """The transport's stop is heard within the fade, not after what the ring held: the
    unplayed samples fade out in place and the rest are silent, and the recording's end is
    rewritten to match, so it still holds exactly what left the output."""
    from bridge.live.audio_path import AudioPath

    ring = Ring(48000, 2)
    rec = WavRecorder(tmp_path / "set.wav", 48000, 2)
    path = AudioPath(48000, 48000, ring, load_chain("clean"), recorder=rec)
    path.push(np.full((1, 9600), 0.5, np.float32))
    played = np.zeros((1000, 2), np.float32)
    ring.read_into(played)  # 1000 samples have left the output; the rest is buffered
    path.fade_out_now(10.0)  # 480 samples at 48 kHz
    path.push(np.full((1, 2400), 0.5, np.float32))  # generated after the stop: silent until a fade-in
    rest = np.zeros((ring.fill, 2), np.float32)
    ring.read_into(rest)
    heard = np.concatenate([played, rest])[:, 0]
    assert heard[999] > 0.3 and heard[1000] == pytest.approx(heard[999], abs=0.01)  # no click where the fade begins
    assert np.all(np.diff(heard[1000:1480]) <= 1e-6) and heard[1479] < 0.01  # down over the fade
    assert not heard[1480:].any()  # and silent after it, the audio buffered before the stop included
    rec.close()
    with wave.open(str(tmp_path / "set.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)[:, 0] / 32767.0
    assert len(pcm) == len(heard) and np.allclose(pcm, heard, atol=1e-4)  # the file is what was played
