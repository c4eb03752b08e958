"""Labelled audio on Ray (issue 22): ``--engine ray`` pools the same windows as the local
engine, resumes a killed run without redoing a finished shard, skips bad files on both
engines, and is the only code that imports Ray.

One local Ray (2 CPUs, loopback only) serves the whole module; the tests that need it
skip where Ray is not installed (the ``scale`` extra)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from steering_core.audio import write_wav
from steering_core.errors import UserError
from steering_core.evaluate.probes import score_layers
from steering_core.extract.extraction import METHODS
from steering_core.extract.labelled_audio import collect_labelled
from steering_core.extract.ray_engine import actor_resources, ray_engine
from steering_core.model.loading import load_model
from steering_core.scoped import torch_threads
from steering_core.toy.captions import write_labelled_folders
from steering_core.toy.world import SAMPLE_RATE
from tests.test_layout import REPO, imported_modules, project_modules

# Ray otherwise advertises and binds the machine's outward address; with this it uses
# 127.0.0.1 only (read when ray is imported, so set before; its processes inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

WINDOW_S = 1.0


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The toy's bright and dark world, 200 one-second clips a class: 400 windows."""
    root = tmp_path_factory.mktemp("world")
    write_labelled_folders(root, "timbre", per_class=200, seconds=WINDOW_S, seed=0)
    return root


#: What both engines say about ``add_bad_files``'s files, in path order.
BAD_REASONS = ["unreadable (Failed to open audio file: does not seem to contain audio data in a known or supported "
               "format.)", "shorter than 1 s", "3 channels (want mono or stereo)"]


def add_bad_files(root: Path) -> list[str]:
    """An unreadable file, one too short and one with three channels; their paths."""
    garbage = root / "bright" / "garbage.wav"
    garbage.write_bytes(b"RIFF not really audio" * 50)
    short = root / "dark" / "short.wav"
    write_wav(short, np.zeros((1, SAMPLE_RATE // 2), np.float32), SAMPLE_RATE)
    surround = root / "dark" / "surround.wav"
    write_wav(surround, np.zeros((3, 2 * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    return sorted(str(p) for p in (garbage, short, surround))


def steerbridge(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_ray_pools_the_windows_the_local_engine_pools(toy, ray_address, world, tmp_path) -> None:
    started = time.monotonic()
    with torch_threads(1):  # as each actor runs; two threads on two cores shared with Ray's processes crawled
        local = collect_labelled(toy, world, window_s=WINDOW_S, cache=tmp_path / "local", progress=False)
    local_s = time.monotonic() - started
    started = time.monotonic()
    on_ray = collect_labelled(toy, world, window_s=WINDOW_S, cache=tmp_path / "ray", progress=False,
                              engine=ray_engine(workers=2, device="cpu"))
    print(f"400 windows: local {local_s:.1f} s, ray (2 workers, started) {time.monotonic() - started:.1f} s")
    assert on_ray.computed == local.computed == 400 and on_ray.from_cache == 0
    assert on_ray.sources == local.sources and on_ray.labels == local.labels and on_ray.files == local.files
    for method in ("diffmean", "probe_mse"):
        ours, theirs = METHODS[method](*local.split("bright", "dark")), METHODS[method](*on_ray.split("bright", "dark"))
        cosines = (ours * theirs).sum(dim=-1)
        assert cosines.min() >= 0.9999, (method, cosines)
    ends = [0, toy.num_layers - 1]  # probes cost; the first and last layer stand for the rest
    local_scores = score_layers(local.activations[:, ends], local.labels, groups=local.files)
    ray_scores = score_layers(on_ray.activations[:, ends], on_ray.labels, groups=on_ray.files)
    assert [(s.acc_logistic, s.acc_mse) for s in ray_scores] == [(s.acc_logistic, s.acc_mse) for s in local_scores]
    assert max(s.acc_logistic for s in local_scores) > 0.9  # the toy hears brightness: a test that can tell
    again = collect_labelled(toy, world, window_s=WINDOW_S, cache=tmp_path / "ray", progress=False,
                             engine=ray_engine(workers=2, device="cpu"))
    assert again.from_cache == 400 and again.computed == 0 and torch.equal(again.activations, on_ray.activations)


def test_a_killed_ray_run_resumes_without_redoing_a_finished_shard(toy, ray_address, tmp_path) -> None:
    data = tmp_path / "data"
    write_labelled_folders(data, "timbre", per_class=20, seconds=3 * WINDOW_S, seed=1)
    bad = add_bad_files(data)
    cache = tmp_path / "cache"
    out = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (the child writes it until killed)
    child = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "extract", "--model", "toy", "--device", "cpu", "--data", str(data),
         "--window", str(WINDOW_S), "--cache", str(cache), "--engine", "ray", "--ray-address", ray_address,
         "--ray-workers", "1", "--out", str(tmp_path / "v.safetensors")],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while len([p for p in cache.glob("*.npy") if p.name.count(".") == 1]) < 2:
            assert child.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard within 240 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        out.close()
    finished = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy") if p.name.count(".") == 1}
    assert 2 <= len(finished) < 40, "the child must die with files left to do"
    resumed = collect_labelled(toy, data, window_s=WINDOW_S, cache=cache, progress=False,
                               engine=ray_engine(workers=1, device="cpu"))
    assert resumed.from_cache == len(finished) and resumed.computed == 40 - len(finished)
    assert {name: (cache / name).stat().st_mtime_ns for name in finished} == finished  # none written again
    assert len(resumed.activations) == 120
    assert [(s.path, s.reason) for s in resumed.skipped] == list(zip(bad, BAD_REASONS, strict=True))


def test_the_local_engine_skips_bad_files_and_extract_lists_them(tmp_path) -> None:
    data = tmp_path / "data"
    write_labelled_folders(data, "timbre", per_class=3, seconds=2 * WINDOW_S, seed=2)
    bad = add_bad_files(data)
    run = steerbridge("extract", "--model", "toy", "--device", "cpu", "--data", "data", "--window", str(WINDOW_S),
                      "--cache", "cache", "--out", "v.safetensors", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "6+6 audio windows" in run.stdout  # three good clips a class, two windows each
    listed = run.stdout.split("skipped 3 files:\n")[1].splitlines()
    assert [line.split(": ", 1) for line in listed] == [[f"  {Path(p).relative_to(tmp_path)}", reason]
                                                        for p, reason in zip(bad, BAD_REASONS, strict=True)]


def test_engine_ray_without_ray_is_one_line(tmp_path) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    (tmp_path / "data").mkdir()
    run = steerbridge("extract", "--model", "toy", "--data", "data", "--engine", "ray", "--out", "v.safetensors",
                      cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)])})
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "pip install 'steerbridge[scale]'" in run.stderr


def test_only_the_ray_engine_imports_ray() -> None:
    importers = sorted(name for name, path in project_modules().items()
                       if any(m == "ray" or m.startswith("ray.") for m in imported_modules(path)))
    assert importers == ["steering_core.extract.ray_engine"]


def test_actors_take_one_gpu_each_on_a_gpu_cluster_and_leave_cpu_for_reading_otherwise() -> None:
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, None, "auto") == (4, {"num_gpus": 1.0, "num_cpus": 1.0})
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, 8, "auto")[0] == 4
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, None, "cpu") == (31, {"num_cpus": 1.0})
    size, each = actor_resources({"CPU": 2.0}, 2, "auto")
    assert size == 2 and size * each["num_cpus"] < 2.0  # room left for the tasks that read and cut
    assert actor_resources({"CPU": 2.0}, None, "auto") == (1, {"num_cpus": 1.0})
    with pytest.raises(UserError, match="no GPUs"):
        actor_resources({"CPU": 2.0}, None, "cuda")
