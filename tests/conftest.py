import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from steering_core.model.loading import MusicGenHandle, load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser) -> None:
    parser.addoption("--cpu-hog", type=int, default=0, metavar="N",
                     help="run N busy processes beside the tests (CI checks the realtime tests under load)")


@pytest.fixture(scope="session", autouse=True)
def cpu_hogs(request):
    n = request.config.getoption("--cpu-hog")
    if n <= 0:
        yield None
        return
    from tests.realtime import CpuHogs

    hogs = CpuHogs(n)
    try:
        yield hogs
    finally:
        hogs.stop()


@pytest.fixture
def audio_clock(tiny, monkeypatch) -> float:
    """``--audio-out none`` on a clock this machine can keep up with now; returns its speed
    (1.0 is real time). See tests/realtime.py."""
    from bridge.live import outputs
    from tests.realtime import ScaledClock, clock_speed

    speed = clock_speed(tiny)
    monkeypatch.setattr(ScaledClock, "speed", speed)
    monkeypatch.setattr(outputs, "ClockOutput", ScaledClock)
    return speed


@pytest.fixture(scope="session")
def tiny() -> MusicGenHandle:
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def vectors_dir(tiny, tmp_path_factory):
    """timbre and tempo vectors for the tiny model, extracted once per session."""
    from steering_core.extract.concepts import load_concept
    from steering_core.extract.extraction import extract_vector

    folder = tmp_path_factory.mktemp("vectors")
    for name in ("timbre", "tempo"):
        extract_vector(tiny, load_concept(name), frames=10, progress=False).save(folder / f"{name}.safetensors")
    return folder


@pytest.fixture(scope="session")
def jack(tmp_path_factory):
    from tests.realparts import jack_server

    yield from jack_server(tmp_path_factory.mktemp("jack"))


@pytest.fixture(scope="session")
def pulse(tmp_path_factory):
    from tests.realparts import pulse_server

    yield from pulse_server(tmp_path_factory.mktemp("pulse"))
