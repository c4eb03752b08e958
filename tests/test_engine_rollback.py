"""A knob change rolls back what was generated past the first unplayed frame, unless the
ring cannot pay for generating it again: then it lands at the next step, and the sound
goes on. Driven by hand on the test thread (the engine thread is never started), so
no clock is involved."""

from __future__ import annotations

import pytest

from bridge.live.engine import ROLLBACK_COST_MARGIN
from bridge.live.serve import ServeOptions, Server


@pytest.fixture
def server(tiny, vectors_dir, tmp_path):
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False)
    server = Server(options, handle=tiny)
    yield server
    server.stop()


def turn_timbre(server: Server, value: float) -> tuple[int, int]:
    """Fill the ring (nothing reads it), turn a knob; frames complete before and after."""
    engine = server.engine
    while engine.ring.fill < 4 * engine.ring_target:
        engine._produce_chunk()
    before = engine.stream.frames_complete
    assert before > engine.decoder.emitted_frames  # there is something past the unplayed frame to roll back
    server.control.submit([server.control.change("/steer/timbre", value)], "test", "knob")
    engine._take_events()
    return before, engine.stream.frames_complete


def test_a_change_rolls_back_when_the_ring_can_pay(server) -> None:
    engine = server.engine
    with engine.stream.steering():
        engine._produce_chunk()
        engine.step_s = 0.001  # 1 ms a step: a few steps again cost far less than the ring holds
        before, after = turn_timbre(server, 2.0)
    assert after < before and engine.deferred_rollbacks == 0
    assert after == engine.decoder.emitted_frames  # back to the first unplayed frame


def test_a_change_waits_for_the_next_step_when_the_ring_cannot_pay(server) -> None:
    engine = server.engine
    with engine.stream.steering():
        engine._produce_chunk()
        engine.step_s = 1.0  # a second a step: generating anything again would empty the ring
        before, after = turn_timbre(server, 2.0)
        assert after == before and engine.deferred_rollbacks == 1
        assert engine.performance.targets["timbre"] == 2.0  # the change is not lost, only not rolled back
        assert engine.status()["deferred_rollbacks"] == 1


def test_the_cost_counts_the_steps_to_redo(server) -> None:
    engine = server.engine
    while engine.ring.fill < 2 * engine.ring_target:
        with engine.stream.steering():
            engine._produce_chunk()
    fill_s = engine.ring.fill / engine.path.device_rate
    half_goal_s = engine.ring_target // 2 / engine.path.device_rate
    engine.step_s = (fill_s - half_goal_s) / ROLLBACK_COST_MARGIN / 10 * 0.99  # ten steps again just fit
    assert engine._can_regenerate(0) and engine._can_regenerate(10)
    assert not engine._can_regenerate(11)
