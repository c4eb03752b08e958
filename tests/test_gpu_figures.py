"""benchmarks/gpu_figures.py runs end to end on the CPU (--smoke: tiny, a second of audio)."""

import importlib.util
import json
from pathlib import Path

import pytest


def _load_script():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_figures.py"
    spec = importlib.util.spec_from_file_location("gpu_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_figures_smoke_runs_end_to_end(capsys) -> None:
    script = _load_script()
    assert script.main(["--smoke", "--soak-seconds", "0", "--max-streams", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[0])
    (row,) = result["models"]
    assert row["model"] == "tiny" and row["graph_state"] == "no CUDA" and row["rtf_graphs"] is None
    for key in ("rtf_loop", "rtf_eager", "rtf_generate", "reprime_ms", "first_audio_ms"):
        assert row[key] > 0, key
    assert row["max_realtime_streams"] in (0, 1, 2) and row["streams_sweep"]
    assert row["max_realtime_stems"] in (0, 1, 2) and row["stems_sweep"][0]["rtf_per_stem"] > 0
    assert out[1].startswith("| model |") and out[3].startswith("| tiny |")


def test_without_a_gpu_the_full_run_refuses_at_once_unless_asked(capsys) -> None:
    """On a CPU the full figures would grind for hours without a word (issue 21)."""
    import time

    script = _load_script()
    started = time.perf_counter()
    assert script.main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU" in err[0] and "--smoke" in err[0] and "--allow-cpu" in err[0]
    assert time.perf_counter() - started < 5
