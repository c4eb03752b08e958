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
