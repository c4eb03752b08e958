import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from steering_core.models import MusicGenHandle, load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny() -> MusicGenHandle:
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def vectors_dir(tiny, tmp_path_factory):
    """timbre and tempo vectors for the tiny model, extracted once per session."""
    from steering_core.concepts import load_concept
    from steering_core.extraction import extract_vector

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
