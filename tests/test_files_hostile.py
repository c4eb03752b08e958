"""Files as a careless or hostile user writes them (issue 11): vector files, chains,
MIDI maps, scenes and performance logs are refused with one line before they are used;
the limiter is a true ceiling, measured."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bridge.live.chains import ChainError, ceiling, load_chain
from bridge.live.midimaps import MidiMapError, load_map
from bridge.live.performance_log import PerformanceLogError, read_log
from bridge.live.ring import Ring
from bridge.live.scenes import SceneError, SceneStore
from bridge.live.serve import vector_files
from steering_core.extract.concepts import ConceptError, check_name, load_concept
from steering_core.steer.vectors import METADATA_KEY, SteeringVector, VectorFileError, load_vector

ROOT = Path(__file__).resolve().parent.parent

YAML_BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
effects: [*g]
controls: [*g]
"""


# --- vector files -------------------------------------------------------------------
def write_vector(path: Path, **meta_changes) -> Path:
    v = SteeringVector("timbre", torch.eye(4)[:2].clone(), (0, 1))
    meta = {**v.metadata(), **meta_changes}
    save_file({"directions": v.directions, "layers": torch.tensor([0, 1])}, str(path),
              metadata={METADATA_KEY: json.dumps(meta)})
    return path


@pytest.mark.parametrize(("change", "reason"), [
    ({"concept": "x*("}, "not a name"),
    ({"concept": "tempo\n"}, "not a name"),
    ({"concept": "a/b"}, "not a name"),
    ({"alpha_range": [-1e30, 1e30]}, "goes past"),
    ({"gains": [1e308, 1.0]}, "gains must be within"),
])
def test_vector_files_that_would_break_a_set_are_refused(tmp_path, change, reason) -> None:
    assert load_vector(write_vector(tmp_path / "ok.safetensors")).concept == "timbre"
    with pytest.raises(VectorFileError, match=reason):
        load_vector(write_vector(tmp_path / "bad.safetensors", **change))


def test_a_vector_file_named_apart_from_its_concept_keeps_its_own_path(tmp_path) -> None:
    write_vector(tmp_path / "my brightness v2.safetensors")
    ((vector, path),) = vector_files([tmp_path])
    assert vector.concept == "timbre" and path.is_file()  # --record hashes this path
    write_vector(tmp_path / "again.safetensors")
    with pytest.raises(VectorFileError, match="both hold concept 'timbre'"):
        vector_files([tmp_path])


# --- names ----------------------------------------------------------------------------
def test_names_with_a_trailing_newline_are_refused(tmp_path) -> None:
    with pytest.raises(ConceptError):
        check_name("x\n")
    with pytest.raises(SceneError):
        SceneStore(tmp_path).save("x\n", {"targets": {}})
    assert not list(tmp_path.iterdir())


# --- YAML -------------------------------------------------------------------------------
@pytest.mark.parametrize(("loader", "error"), [(load_chain, ChainError), (load_map, MidiMapError)])
def test_yaml_bombs_are_refused_before_parsing_without_echoing_them(tmp_path, loader, error) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(YAML_BOMB)
    t = time.perf_counter()
    with pytest.raises(error, match="aliases") as info:
        loader(str(bomb))
    assert time.perf_counter() - t < 1.0 and len(str(info.value)) < 300


def test_huge_yaml_files_are_refused_unread(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("effects:\n" + "  - {effect: Gain, gain_db: 0.0}\n" * 20000)
    with pytest.raises(ChainError, match="limit"):
        load_chain(str(big))


# --- effects ---------------------------------------------------------------------------
@pytest.mark.parametrize("effect", ["{effect: LowpassFilter, cutoff_frequency_hz: -5}",
                                    "{effect: Reverb, wet_level: 40}", "{effect: Gain, gain_db: .nan}",
                                    "{effect: Limiter, threshold_db: 12}", "{effect: Delay, feedback: 3}"])
def test_effect_parameters_outside_their_physical_range_are_refused(tmp_path, effect) -> None:
    chain = tmp_path / "c.yaml"
    chain.write_text(f"effects:\n  - {effect}\n")
    with pytest.raises(ChainError, match=r"range|finite"):
        load_chain(str(chain))


@pytest.mark.parametrize("chain", ["default", "clean", "space", "lofi"])
def test_the_limiter_is_a_true_ceiling(chain) -> None:
    from bridge.live.audio_path import AudioPath

    board = load_chain(chain)
    ring = Ring(48000 * 4, 2)
    path = AudioPath(32000, 48000, ring, board)
    rng = np.random.default_rng(0)
    for _ in range(40):  # full-scale noise with DC and spikes past full scale
        block = np.clip(rng.standard_normal((1, 640)) * 2.0 + 0.5, -4, 4).astype(np.float32)
        block[0, ::97] = 4.0
        path.push(block)
    path.flush()
    out = np.empty((ring.fill, 2), np.float32)
    ring.read_into(out)
    assert out.size and np.abs(out).max() <= ceiling(board) + 1e-7


# --- scenes -------------------------------------------------------------------------------
@pytest.mark.parametrize("scene", ['{"targets": {"timbre": NaN}}', '{"targets": {}, "enabled": {"timbre": "yes"}}',
                                   '{"targets": {}, "prompt": 5}'])
def test_malformed_scenes_are_refused(tmp_path, scene) -> None:
    (tmp_path / "s.json").write_text(scene)
    with pytest.raises(SceneError):
        SceneStore(tmp_path).load("s")


# --- performance logs ------------------------------------------------------------------
HEADER = {"type": "header", "format": 1}


@pytest.mark.parametrize("lines", [
    [[1, 2]],
    [{**HEADER, "vectors": ["not a dict"]}],
    [{**HEADER, "settings": "x"}],
    [{**HEADER, "seed": "x"}],
    [HEADER, "an event"],
    [HEADER, {"type": "event", "step": "5", "changes": [{"kind": "alpha", "concept": "t", "value": 1}]}],
    [HEADER, {"type": "event", "step": 5, "changes": [{"kind": "alpha", "concept": "t", "value": "loud"}]}],
    [HEADER, {"type": "event", "step": 5, "changes": [7]}],
    [HEADER, {"type": "end", "frames": None, "codes_sha256": "x"}],
])
def test_malformed_performance_logs_are_one_line_errors(tmp_path, lines) -> None:
    from bridge.live.performance_log import LOG_FORMAT

    assert HEADER["format"] == LOG_FORMAT
    log = tmp_path / "p.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(PerformanceLogError):
        read_log(log)


def test_render_automation_with_a_malformed_log_prints_one_line(tmp_path) -> None:
    log = tmp_path / "p.jsonl"
    log.write_text(json.dumps({**HEADER, "vectors": [5]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "render", "--automation", str(log), "--out",
                           str(tmp_path / "o.wav")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "malformed header" in done.stderr


# --- a FIFO where a file should be (issue 21, item 7) ------------------------------------
def _raises_in_time(call, error: type[BaseException], fifo: Path, seconds: float = 10.0) -> str:
    """``call()`` raises ``error`` within ``seconds``. Reading a FIFO used to block in open()
    until a writer came: serve hung at start-up, silently."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:  # blocked: open the FIFO's other end so the thread can finish
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still blocked on {fifo.name} after {seconds} s")
    assert isinstance(outcome[0], error), outcome[0]
    return str(outcome[0])


@pytest.mark.parametrize(("name", "load", "error"), [
    ("chain.yaml", lambda p: load_chain(str(p)), ChainError),
    ("map.yaml", lambda p: load_map(str(p)), MidiMapError),
    ("concept.yaml", lambda p: load_concept(str(p)), ConceptError),
    ("set.performance.jsonl", read_log, PerformanceLogError),
])
def test_a_fifo_is_refused_at_once_with_one_line(tmp_path, name, load, error) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    message = _raises_in_time(lambda: load(fifo), error, fifo)
    assert "\n" not in message and ("FIFO" in message or "regular file" in message), message


def test_serve_with_a_fifo_for_a_file_option_exits_with_one_line(tmp_path) -> None:
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = str(probe.getsockname()[1])
    probe.close()
    for option, value in (("--chain", fifo), ("--midi-map", fifo), ("--record", fifo)):
        try:
            done = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--audio-out", "none",
                                   "--osc-port", port, "--duration", "1", option, str(value)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"serve {option} <a FIFO> hung")
        assert done.returncode == 2, (option, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr and len(lines) == 1, (option, done.stderr[-2000:])
        assert "FIFO" in lines[0] or "regular file" in lines[0], (option, lines[0])


# --- bad files are one line, exit status 2 (issue 21, item 8) ---------------------------------
def _one_line_exit_2(argv: list[str], *expected: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bridge.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert all(word in lines[0] for word in expected), lines[0]
    return lines[0]


BAD_CONTROLS = {
    "lsb: x": "{cc: 16, target: /steer/@1/knob, lsb: x}",
    "step: fast": "{cc: 16, target: /steer/@1/knob, mode: relative_twos, step: fast}",
    "step: .inf": "{cc: 16, target: /steer/@1/knob, mode: relative_twos, step: .inf}",
    "range: [0, .nan]": "{cc: 16, target: /steer/@1/knob, range: [0, .nan]}",
    "range past float": "{cc: 16, target: /steer/@1/knob, range: [-1.0e308, 1.0e308]}",
    "cc: true": "{cc: true, target: /steer/@1/knob}",
    "cc: 1.5": "{cc: 1.5, target: /steer/@1/knob}",
    "target: a list": "{cc: 16, target: [1, 2]}",
    "button: maybe": "{cc: 41, target: /transport/play, button: maybe}",
    "channel: true": "{cc: 16, target: /steer/@1/knob, channel: true}",
}


@pytest.mark.parametrize("control", BAD_CONTROLS.values(), ids=BAD_CONTROLS.keys())
def test_midi_map_controls_of_the_wrong_type_are_one_line_errors(tmp_path, control) -> None:
    (tmp_path / "m.yaml").write_text(f"controls:\n  - {control}\n")
    with pytest.raises(MidiMapError) as info:
        load_map(str(tmp_path / "m.yaml"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("program_change", ["{zero: calm}", "{1: calm, 200: other}", "{true: calm}", "{1: ../x}"])
def test_midi_map_program_changes_must_be_numbers_to_scene_names(tmp_path, program_change) -> None:
    (tmp_path / "m.yaml").write_text(f"controls: []\nprogram_change: {program_change}\n")
    with pytest.raises(MidiMapError, match="program_change"):
        load_map(str(tmp_path / "m.yaml"))
    (tmp_path / "ok.yaml").write_text("controls: []\nprogram_change: {0: calm, 127: loud}\n")
    assert load_map(str(tmp_path / "ok.yaml")).program_change == {0: "calm", 127: "loud"}


def test_serve_with_a_midi_map_of_the_wrong_type_prints_one_line(tmp_path) -> None:
    (tmp_path / "m.yaml").write_text(f"controls:\n  - {BAD_CONTROLS['lsb: x']}\n")
    _one_line_exit_2(["serve", "--model", "tiny", "--audio-out", "none", "--duration", "1", "--midi-map",
                      str(tmp_path / "m.yaml")], "m.yaml", "0-127")


def _event(change: dict) -> dict:
    return {"type": "event", "t": 0.1, "source": "osc", "label": "x", "step": 5, "changes": [change]}


HOSTILE_LOGS = {
    "alpha 1e308": [HEADER, _event({"kind": "alpha", "concept": "timbre", "value": 1e308})],
    "unknown setting": [{**HEADER, "settings": {"guidance_scale": 3.0, "warp": 1.0}}],
    "setting out of range": [{**HEADER, "settings": {"temperature": 1e308}}],
    "1 MB prompt": [{**HEADER, "prompt": "x" * 1_000_000}],
    "1 MB prompt change": [HEADER, _event({"kind": "prompt", "value": "y" * 1_000_000})],
    "seed past 64 bits": [{**HEADER, "seed": 2**70}],
    "top_k change of -1": [HEADER, _event({"kind": "top_k", "value": -1})],
    "enabled: maybe": [HEADER, _event({"kind": "enabled", "concept": "timbre", "value": "maybe"})],
}


@pytest.mark.parametrize("lines", HOSTILE_LOGS.values(), ids=HOSTILE_LOGS.keys())
def test_performance_logs_past_what_serve_writes_are_refused(tmp_path, lines) -> None:
    log = tmp_path / "p.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(PerformanceLogError) as info:
        read_log(log)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("case", ["alpha 1e308", "unknown setting", "1 MB prompt"])
def test_render_automation_with_a_hostile_log_prints_one_line(tmp_path, case) -> None:
    log = tmp_path / "p.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in HOSTILE_LOGS[case]) + "\n")
    _one_line_exit_2(["render", "--automation", str(log), "--out", str(tmp_path / "o.wav")], "p.jsonl")


def test_a_model_folder_with_pickled_or_broken_weights_is_one_line(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "bridge.cli", "save-tiny", str(tmp_path / "m")], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").unlink()
    # A pickle that names a class: never unpickled, whatever it holds.
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04cposix\nsystem\n.")
    _one_line_exit_2(["render", "--model", str(tmp_path / "m"), "--seconds", "1", "--out", str(tmp_path / "o.wav")],
                     "pickled weights")
    (tmp_path / "m" / "pytorch_model.bin").unlink()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\xff" * 64 + weights[64:])
    _one_line_exit_2(["render", "--model", str(tmp_path / "m"), "--seconds", "1", "--out", str(tmp_path / "o.wav")],
                     "not a valid safetensors")


# --- a full disk leaves both files exact, and the log quiet (issue 21, item 10) ---------------
FILL_THE_DISK = r"""
import json, logging, sys, time
import numpy as np
from bridge.live.control import ControlEvent
from bridge.live.performance_log import PerformanceLog
from bridge.live.recorder import WavRecorder
from steering_core.stream.timeline import Change

folder, kind = sys.argv[1], sys.argv[2]
errors = []
class Count(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            errors.append(record.getMessage())
logging.getLogger("steerbridge").addHandler(Count())
if kind == "log":
    log = PerformanceLog(f"{folder}/p.jsonl", {"prompt": "x" * 300})
    for step in range(2000):  # a knob turned for a minute
        log.event(ControlEvent((Change("alpha", step / 1000, "timbre"),), "osc", "/steer/timbre", step=step), 0.1)
    log.end(2000, "0" * 64)
    print(json.dumps({"errors": errors, "lines": log.lines, "unwritten": log.unwritten, "summary": log.summary()}))
else:
    rec = WavRecorder(f"{folder}/r.wav", 48000, 2)
    for _ in range(400):
        rec.write(np.full((960, 2), 0.25, np.float32))
        time.sleep(0.001)
    rec.close()
    print(json.dumps({"errors": errors, "frames": rec.frames, "failure": rec.failure}))
"""


@pytest.fixture(params=["tmpfs", "file size limit"])
def small_full_disk(request, tmp_path):
    """A folder and how to run a process so that its writes run out of room after 96 KiB: a real
    tmpfs of that size where mounting is allowed (root), and everywhere the kernel's file
    size limit (RLIMIT_FSIZE: the same partial write, then EFBIG)."""
    room = 96 * 1024
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(folder)],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (not root); the file size limit case runs instead")
        yield folder, None
        subprocess.run(["umount", str(folder)], check=True)
        return

    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    yield folder, limit


def _fill(small_full_disk, kind: str) -> tuple[Path, dict]:
    folder, limit = small_full_disk
    done = subprocess.run([sys.executable, "-c", FILL_THE_DISK, str(folder), kind], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout)


def test_a_full_disk_leaves_the_recording_exact(small_full_disk) -> None:
    folder, result = _fill(small_full_disk, "wav")
    data = (folder / "r.wav").read_bytes()
    assert result["failure"] and len(result["errors"]) == 1, result
    riff, data_bytes = int.from_bytes(data[4:8], "little"), int.from_bytes(data[40:44], "little")
    # the header, the length and the frames agree, and nothing follows the data chunk
    assert riff == len(data) - 8 and data_bytes == len(data) - 44 == result["frames"] * 4, (len(data), riff, data_bytes)
    assert result["frames"] > 0


def test_a_full_disk_stops_the_performance_log_on_a_whole_line_with_one_error(small_full_disk) -> None:
    folder, result = _fill(small_full_disk, "log")
    data = (folder / "p.jsonl").read_bytes()
    assert len(result["errors"]) == 1 and "stopped after" in result["errors"][0], result["errors"][:3]
    assert data.endswith(b"\n") and data.count(b"\n") == result["lines"] > 1
    assert result["lines"] + result["unwritten"] == 2002  # the header, 2000 events, the end
    performed = read_log(folder / "p.jsonl")  # what is there replays: the set's exact beginning
    assert [step for step, _ in performed.schedule] == list(range(result["lines"] - 1))
    assert performed.frames is None and "stopped early" in result["summary"]
