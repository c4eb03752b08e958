"""Calibrated knob ranges, the toy's ground truth read from its codes, and selectivity.

The range finder and the matrix are checked on tables made here (fast, exact); one short
toy calibration and one CLI run check the whole path. The issue's figures (7 alphas x 5
seeds, librosa as judge) are benchmarks/calibration.py's, recorded in RESULTS.md.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steering_core.evaluate.calibration import Bounds, alpha_grid, apply, calibrate, find_range
from steering_core.evaluate.measures import MeasureTable, distinct_frames
from steering_core.evaluate.selectivity import effect_row, selective_candidates, slope
from steering_core.extract.concepts import load_concept
from steering_core.extract.extraction import extract_vector
from steering_core.model.loading import load_model
from steering_core.steer.vectors import SteeringVector, load_vector
from steering_core.toy import world
from steering_core.toy.readback import read_codes
from steering_core.toy.shipped_vectors import shipped_default, shipped_path

ROOT = Path(__file__).resolve().parent.parent


# --- the toy's ground truth ---------------------------------------------------------------------
@pytest.mark.parametrize("bpm", [70.0, 120.0, 170.0])
def test_codes_give_back_the_tempo_shade_and_instruments_the_world_played(bpm: float) -> None:
    for piano, bass, shade in [(True, False, 1), (False, True, 5)]:
        params = world.Params(bpm=bpm, brightness=shade, major=True, piano=piano, bass=bass)
        got = read_codes(world.score(params, 400, random.Random(3)))
        assert got["drum_bpm"] == pytest.approx(bpm, rel=0.06)  # each gap is the eighth note give or take a frame
        assert abs(got["lead_shade"] - shade) <= 1.0
        assert (got["piano_presence"] > 0.2) == piano and (got["bass_presence"] > 0.2) == bass


def test_a_drone_is_few_distinct_frames_and_a_groove_many() -> None:
    drone = np.zeros((4, 200), dtype=np.int64)
    groove = world.score(world.Params(80.0, 3, True, True, True), 200, random.Random(1))
    assert distinct_frames(drone) == 1 and distinct_frames(groove) > Bounds().max_stuck_frames


# --- the range finder, on tables made here -------------------------------------------------------
def _table(own: list[float], other: list[float] | None = None, rms: list[float] | None = None,
           alphas: list[float] | None = None) -> MeasureTable:
    alphas = alphas or [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    n = len(alphas)
    jitter = np.array([-0.01, 0.0, 0.01])  # three seeds, a little spread
    col = lambda xs: np.array(xs, dtype=np.float64)[:, None] * (1 + jitter[None, :])  # noqa: E731
    values = {"centroid_hz": col(own), "onset_rate": col(other or [4.0] * n), "rms": col(rms or [0.1] * n),
              "flatness": col([0.01] * n), "distinct_frames": col([50.0] * n)}
    return MeasureTable("timbre", alphas, values, "p", 3, 1.0)


def _range(t: MeasureTable) -> tuple[float, float] | None:
    i, j, _ = find_range(t, "centroid_hz", ("onset_rate", "rms"), Bounds())
    return None if i < 0 else (t.alphas[i], t.alphas[j])


def test_the_range_is_the_widest_interval_where_the_knob_rises_and_the_rest_holds() -> None:
    rising = [700, 800, 900, 1000, 1100, 1200, 1300]
    assert _range(_table(rising)) == (-3.0, 3.0)
    # the onset rate leaves its 20 % band at +3, the RMS at -3 (a busy mess, a quiet one)
    assert _range(_table(rising, other=[4, 4, 4, 4, 4, 4.5, 6])) == (-3.0, 2.0)
    assert _range(_table(rising, rms=[0.05, 0.09, 0.1, 0.1, 0.1, 0.1, 0.1])) == (-2.0, 3.0)
    # past +1 brightness turns back down: the knob would not mean what it says there
    assert _range(_table([700, 800, 900, 1000, 1100, 900, 800])) == (-3.0, 1.0)


def test_collapse_ends_the_range_and_no_rise_is_reported_not_invented() -> None:
    t = _table([700, 800, 900, 1000, 1100, 1200, 1300])
    t.values["distinct_frames"][6] = 2.0  # stuck at +3
    t.values["flatness"][0] = 0.9  # noise at -3
    assert _range(t) == (-2.0, 2.0)
    flat = _table([1000, 1010, 990, 1000, 1005, 995, 1000])
    i, _, why = find_range(flat, "centroid_hz", ("onset_rate", "rms"), Bounds())
    assert i < 0 and "does not rise" in why


def test_the_alpha_grid_holds_zero_and_is_fine_near_it() -> None:
    grid = alpha_grid(3.0)
    assert grid == [-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


# --- the file ------------------------------------------------------------------------------------
def _vector(concept: str = "timbre", seed: int = 0) -> SteeringVector:
    return SteeringVector(concept, torch.randn(2, 8, generator=torch.Generator().manual_seed(seed)), (1, 2))


def test_calibration_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    plain = _vector()
    plain.save(tmp_path / "old.safetensors")
    assert load_vector(tmp_path / "old.safetensors").calibration is None
    from safetensors import safe_open

    with safe_open(str(tmp_path / "old.safetensors"), framework="pt") as f:
        assert "calibration" not in json.loads(f.metadata()["steerbridge"])
    cal = {"method": "sweep-interval-v1", "alphas": [-1.0, 0.0, 1.0], "seeds": 3}
    import dataclasses

    calibrated = dataclasses.replace(plain, alpha_range=(-1.0, 1.0), calibration=cal)
    back = load_vector(calibrated.save(tmp_path / "new.safetensors"))
    assert back.alpha_range == (-1.0, 1.0) and back.calibration == cal
    # a new vector made by the algebra has no measured range
    assert (calibrated * 2).calibration is None and calibrated.orthogonalized(_vector("tempo", 1)).calibration is None


# --- selectivity ----------------------------------------------------------------------------------
def test_effects_are_relative_for_rates_and_absolute_for_presences() -> None:
    t = _table([500, 750, 900, 1000, 1100, 1250, 1500])
    t.values["piano_presence"] = np.array([[0.0] * 3] * 3 + [[0.0] * 3] + [[0.5] * 3] * 3)
    row = effect_row(t, (-2.0, 2.0))
    assert row["centroid_hz"] == pytest.approx(0.5, abs=1e-3) and row["onset_rate"] == pytest.approx(0.0, abs=1e-9)
    assert row["piano_presence"] == pytest.approx(0.5)


def test_candidates_include_the_orthogonal_and_the_measured_decoupling() -> None:
    tempo, timbre = _vector("tempo", 1), _vector("timbre", 2)
    from steering_core.evaluate.calibration import Calibration

    cal_t = Calibration("tempo", "onset_rate", ("centroid_hz", "rms"), (-3.0, 3.0), True, "", _table(
        [700, 800, 900, 1000, 1100, 1200, 1300]), Bounds(), (1, 2))  # tempo drags the centroid 100 Hz per alpha
    cal_b = Calibration("timbre", "centroid_hz", ("onset_rate", "rms"), (-3.0, 3.0), True, "", _table(
        [400, 600, 800, 1000, 1200, 1400, 1600]), Bounds(), (1, 2))  # timbre moves it 200 Hz per alpha
    assert slope(cal_t, "centroid_hz") == pytest.approx(100.0, rel=0.02)
    got = selective_candidates(tempo, [timbre], cal_t, {"timbre": cal_b})
    assert set(got) == {"as is", "⊥ timbre", "- 0.5 x timbre"}
    assert all(v.concept == "tempo" for v in got.values())
    assert float(got["⊥ timbre"].cosine(timbre).abs().max()) < 1e-5
    want = tempo._scaled_rows() - 0.5 * timbre._scaled_rows()
    assert torch.allclose(got["- 0.5 x timbre"]._scaled_rows(), want, atol=1e-5)


# --- on the toy -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    return load_model("toy", device="cpu")


def test_a_short_toy_calibration_measures_the_codes_and_the_audio_and_says_what_it_found(toy) -> None:
    vector = extract_vector(toy, load_concept("timbre"), layers=(3,), frames=10, progress=False)
    cal = calibrate(toy, vector, prompt="an instrumental piece with drums and a lead synth",
                    alphas=[-2.0, -1.0, 0.0, 1.0, 2.0], seeds=2, seconds=1.5)
    shade, centroid = cal.table.means("lead_shade"), cal.table.means("centroid_hz")
    assert shade[-1] > shade[0] + 1 and centroid[-1] > centroid[0]  # the lead itself brightens, and it is heard
    lo, hi = cal.alpha_range
    assert lo < 0 < hi and (cal.found or cal.reason)
    meta = apply(vector, cal).calibration or {}
    assert {"method", "alphas", "seeds", "seconds", "measures", "bounds", "date", "prompt", "found"} <= meta.keys()
    assert meta["measures"]["lead_shade"] == pytest.approx(shade.tolist(), abs=1e-3)


def test_the_shipped_toy_defaults_load_checked_and_calibrated(toy) -> None:
    for name in ("tempo", "timbre"):
        vector = shipped_default(toy, name)
        assert vector is not None, f"{shipped_path(name)} is missing or not for this toy"
        assert vector.model_config_sha256 == toy.config_sha256
        assert vector.calibration is not None and vector.calibration["found"]
        assert vector.alpha_range != tuple(load_concept(name).alpha_range)
    assert shipped_default(load_model("tiny", device="cpu"), "tempo") is None


def test_serve_takes_the_shipped_defaults_on_the_toy_without_calibrating(toy, tmp_path, monkeypatch) -> None:
    from bridge.live import serve
    from steering_core.evaluate import calibrated_extract

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrated_extract, "calibrated_vector", lambda *a, **k: pytest.fail("calibrated afresh"))
    paths = serve.default_vectors(toy)
    assert [load_vector(p).alpha_range for p in paths] == [shipped_default(toy, n).alpha_range  # type: ignore[union-attr]
                                                           for n in serve.DEFAULT_CONCEPTS]


def test_extract_calibrate_from_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "extract", "--model", "toy", "--concept", "timbre",
                          "--layers", "3", "--frames", "10", "--calibrate", "--calibrate-seeds", "2",
                          "--calibrate-seconds", "1", "--calibrate-span", "1", "--out", "t.safetensors"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    vector = load_vector(tmp_path / "t.safetensors")
    assert vector.calibration is not None and vector.calibration["alphas"] == alpha_grid(1.0)
    assert -1.0 <= vector.alpha_range[0] < 0 < vector.alpha_range[1] <= 1.0
    assert "calibrated alpha range" in run.stdout
