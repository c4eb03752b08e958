"""The CLI as a user runs it: real subprocesses, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steering_core.model.loading import load_model
from steering_core.steer.vectors import load_vector

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def steerbridge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tempo_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vec") / "tempo.safetensors"
    run = steerbridge("extract", "--model", "tiny", "--concept", "tempo", "--frames", "10", "--out", str(out),
                      cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    return out


def test_extract_writes_valid_vector(tempo_file: Path) -> None:
    vec = load_vector(tempo_file)
    assert vec.concept == "tempo" and vec.site == "resid_post" and vec.model_id == "tiny"


def test_render_alpha_zero_is_bit_identical_to_no_vectors(tempo_file: Path, tmp_path: Path) -> None:
    common = ["render", "--model", "tiny", "--prompt", "fast drums", "--seconds", "2", "--seed", "1"]
    for name, extra in [("none", []), ("zero", ["--vectors", str(tempo_file), "--steer", "tempo=0"]),
                        ("steered", ["--vectors", str(tempo_file), "--steer", "tempo=3"])]:
        run = steerbridge(*common, *extra, "--out", str(tmp_path / f"{name}.wav"), cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    none, zero, steered = ((tmp_path / f"{n}.wav").read_bytes() for n in ("none", "zero", "steered"))
    assert none == zero
    assert steered != none
    assert len(none) > 2 * 32000 * 2  # 2 s of 16-bit mono, plus header


@pytest.mark.parametrize("args, message", [
    (["render", "--steer", "tempo=nan", "--out", "x.wav"], "concept=number"),
    (["render", "--steer", "tempo=1", "--out", "x.wav"], "needs the --vectors file"),
    (["render", "--model", "./missing", "--out", "x.wav"], "no model folder"),
    (["extract", "--concept", "../../etc/passwd", "--out", "x.safetensors"], "no paths"),
    (["extract", "--concept", "tempo", "--method", "magic", "--out", "x.safetensors"], "unknown --method"),
])
def test_bad_input_is_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    run = steerbridge(*args, cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.wav").exists()


def test_corrupt_vector_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    run = steerbridge("render", "--vectors", str(bad), "--out", "x.wav", cwd=tmp_path)
    assert run.returncode == 2 and "not a readable safetensors file" in run.stderr


def test_demo_writes_wavs_and_plots(tmp_path: Path) -> None:
    run = steerbridge("demo", "--out", str(tmp_path / "demo"), "--seconds", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["model"] == "toy"
    for name, metric in (("tempo", "onset_rate"), ("timbre", "centroid_hz")):
        concept = summary["concepts"][name]
        assert len(concept["alphas"]) == 7 and len(concept["values"]) == 7 and len(concept["values"][0]) == 5
        for wav in concept["wavs"]:
            assert (tmp_path / "demo" / wav).stat().st_size > 32000
        for png in (f"{name}_{metric}_vs_alpha.png", f"{name}_spectrograms.png"):
            assert (tmp_path / "demo" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{name}: {metric}" in run.stdout
    assert (tmp_path / "demo" / "tempo_target_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["tempo_target"]["setpoints"] == [80.0, 150.0] and "tempo as a target knob" in run.stdout


def test_render_45_seconds_is_45_seconds(tmp_path: Path) -> None:
    run = steerbridge("render", "--model", "tiny", "--seconds", "45", "--out", str(tmp_path / "long.wav"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    from steering_core.audio import read_audio

    audio, rate = read_audio(tmp_path / "long.wav")
    assert rate == 32000 and audio.shape[-1] == 45 * 32000


def test_bench_prints_one_json_object_with_the_contract_keys(tmp_path: Path) -> None:
    run = steerbridge("bench", "--model", "tiny", "--seconds", "0.5", "--repeats", "1", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1])
    for key in ("model", "device", "dtype", "engine_steps_per_s", "hf_generate_steps_per_s", "speedup", "rtf",
                "steering_overhead", "first_audio_ms"):
        assert key in result, key
    assert result["engine_steps_per_s"] > 0 and result["hf_generate_steps_per_s"] > 0
    assert abs(result["speedup"] - result["engine_steps_per_s"] / result["hf_generate_steps_per_s"]) < 0.05 * result["speedup"]
    static = result["static_step"]  # the static step, steered, beside the loop in the same run
    assert static["tokens_identical"] is True and static["graph_breaks"] == 0 and static["steered_steps_per_s"] > 0


def test_bench_streams_sweep_and_reprime_time(tmp_path: Path) -> None:
    run = steerbridge("bench", "--model", "tiny", "--seconds", "0.3", "--repeats", "1", "--streams", "--max-streams",
                      "4", "--reprime", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    rows = result["streams_sweep"]
    assert [r["streams"] for r in rows] == [1, 2, 4][: len(rows)] and rows
    assert all(r["rtf_per_stream"] >= 1.0 for r in rows[:-1])  # it stops at the first batch that falls behind
    assert len(rows) == 3 or rows[-1]["rtf_per_stream"] < 1.0
    realtime = [r["streams"] for r in rows if r["rtf_per_stream"] >= 1.0]
    assert result["max_realtime_streams"] == (max(realtime) if realtime else 0)
    assert result["reprime_frames"] == load_model("tiny").window_frames // 2
    assert result["reprime_ms"] > 0 and result["reprime_probe_ms"] > 0


def test_render_automation_from_a_midi_file(tmp_path: Path, vectors_dir: Path) -> None:
    import mido

    song = mido.MidiFile()
    track = mido.MidiTrack()
    song.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000))  # 120 BPM: 480 ticks = 0.5 s
    for value in (0, 64, 127):
        track.append(mido.Message("control_change", control=21, value=value, time=480))  # knob 1: tempo
    song.save(tmp_path / "knobs.mid")
    run = steerbridge("render", "--model", "tiny", "--vectors", str(vectors_dir), "--automation", "knobs.mid",
                      "--out", "out.wav", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "3 control events replayed" in run.stdout
    plain = steerbridge("render", "--model", "tiny", "--seconds", "1.52", "--vectors", str(vectors_dir), "--out",
                        "plain.wav", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "out.wav").read_bytes() != (tmp_path / "plain.wav").read_bytes()
