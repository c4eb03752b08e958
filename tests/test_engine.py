"""The engine thread against a slow re-prime: the sound must not stop at a window change."""

import time

import pytest

from bridge.engine import EngineSettings
from bridge.serve import ServeOptions, Server
from steering_core.stream import MusicStream

SLOW_PREFILL_S = 0.12  # far longer than the 50 ms ring: unbuffered, every re-prime is an underrun


@pytest.fixture
def slow_prefill(monkeypatch):
    """Every multi-position forward (a re-prime, and its probe) takes 120 ms longer."""
    real = MusicStream._decoder_logits

    def slow(self, input_ids):
        if input_ids.shape[-1] > 1:
            time.sleep(SLOW_PREFILL_S)
        return real(self, input_ids)

    monkeypatch.setattr(MusicStream, "_decoder_logits", slow)


def play_through_reprimes(tiny, vectors_dir, tmp_path, margin: float, reprimes: int = 3) -> dict:
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False,
                           engine=EngineSettings(reprime_margin=margin))
    server = Server(options, handle=tiny)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while server.status()["reprimes"] < reprimes and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # past the last re-prime's audio
        status = server.status()
    finally:
        server.stop()
    assert status["reprimes"] >= reprimes, status
    return {**status, "reprime_s": server.engine.reprime_s}


def test_the_ring_tops_up_before_a_slow_reprime(tiny, vectors_dir, tmp_path, slow_prefill) -> None:
    status = play_through_reprimes(tiny, vectors_dir, tmp_path, margin=1.5)
    assert status["reprime_s"] >= SLOW_PREFILL_S  # the start-up probe saw the slow prefill
    assert status["underruns"] == 0, status


def test_without_the_top_up_a_slow_reprime_is_heard(tiny, vectors_dir, tmp_path, slow_prefill) -> None:
    """The control: the same set with the top-up off starves at the window changes."""
    status = play_through_reprimes(tiny, vectors_dir, tmp_path, margin=0.0)
    assert status["underruns"] >= 2, status
