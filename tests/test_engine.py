"""The engine thread against a slow re-prime: the sound must not stop at a window change."""

import time

import pytest

from bridge.live.engine import EngineSettings
from bridge.live.serve import ServeOptions, Server
from steering_core.stream.decode_loop import MusicStream

SLOW_PREFILL_S = 0.12  # of audio time: far longer than the 50 ms ring, so unbuffered every re-prime is an underrun

pytestmark = pytest.mark.realtime


@pytest.fixture
def slow_prefill(monkeypatch, audio_clock):
    """Every multi-position forward (a re-prime, and its probe) takes 120 ms of audio time
    longer: 120 ms at real time, more on a machine whose clock runs slower (see audio_clock)."""
    real = MusicStream._decoder_logits
    delay = SLOW_PREFILL_S / audio_clock

    def slow(self, input_ids):
        if input_ids.shape[-1] > 1:
            time.sleep(delay)
        return real(self, input_ids)

    monkeypatch.setattr(MusicStream, "_decoder_logits", slow)
    return delay


def play_through_reprimes(tiny, vectors_dir, tmp_path, margin: float, speed: float, monkeypatch,
                          reprimes: int = 3) -> dict:
    """Play until ``reprimes`` window changes have passed; returns the final status, the
    probe's reprime time and the audio buffered (seconds of audio) as each re-prime began."""
    # The decode loop (cuda_graphs None): this test patches MusicStream's prefill and re-prime.
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs=None,
                           engine=EngineSettings(reprime_margin=margin))
    server = Server(options, handle=tiny)
    buffered: list[float] = []
    real_reprime = MusicStream._reprime

    def reprime(stream) -> None:
        buffered.append(server.ring.fill / server.output.sample_rate)  # the audio that must cover this prefill
        real_reprime(stream)

    monkeypatch.setattr(MusicStream, "_reprime", reprime)
    server.start()
    try:
        deadline = time.monotonic() + 30 / speed
        while server.status()["reprimes"] < reprimes and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3 / speed)  # past the last re-prime's audio
        status = server.status()
    finally:
        server.stop()
    assert status["reprimes"] >= reprimes, status
    return {**status, "reprime_s": server.engine.reprime_s, "buffered_s": buffered, "clock_speed": speed}


# What is checked is the buffer at each re-prime, not the underrun count: whether the
# sound card is starved during a prefill also depends on how the OS schedules threads on
# a busy machine, while "the ring held more audio than the prefill takes" is the top-up's
# own promise. Underruns are reported alongside.
def test_the_ring_tops_up_before_a_slow_reprime(tiny, vectors_dir, tmp_path, slow_prefill, audio_clock,
                                                monkeypatch) -> None:
    status = play_through_reprimes(tiny, vectors_dir, tmp_path, 1.5, audio_clock, monkeypatch)
    assert status["reprime_s"] >= slow_prefill  # the start-up probe saw the slow prefill
    # status (underruns included) goes into the message: a reader sees what was heard,
    # but the count is not asserted, for the reason above (CI once saw 1 at rtf 1.56).
    # Most re-primes, not every one: a top-up needs the engine ahead of the clock, and on a
    # machine busy enough that a spell puts it behind (CI saw rtf 1.1 once, beside another job),
    # one re-prime can begin before its top-up is done. Without the top-up none is covered.
    covered = [b > SLOW_PREFILL_S for b in status["buffered_s"]]
    assert len(covered) >= 3 and sum(covered) >= len(covered) - 1, status


def test_without_the_top_up_a_slow_reprime_is_heard(tiny, vectors_dir, tmp_path, slow_prefill, audio_clock,
                                                    monkeypatch) -> None:
    """The control: the same set with the top-up off holds only the 50 ms ring at each window change."""
    status = play_through_reprimes(tiny, vectors_dir, tmp_path, 0.0, audio_clock, monkeypatch)
    assert len(status["buffered_s"]) >= 2 and all(b < SLOW_PREFILL_S for b in status["buffered_s"]), status
    assert status["underruns"] >= 1, status
