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


def fill_ring(engine, times: int) -> None:
    """Inside ``engine.stream.steering()``: chunks until the ring holds ``times`` its goal."""
    while engine.ring.fill < times * engine.ring_target:
        engine._produce_chunk()


def test_the_cost_counts_everything_the_next_write_needs(server) -> None:
    """The steps rolled back, the steps the next chunk lacks besides, and its write: a flood
    of knob moves, each rolling back a step or two just before a chunk was due, once left
    that chunk to be made from scratch in less time than the ring held (issue 21)."""
    engine = server.engine
    with engine.stream.steering():
        fill_ring(engine, 2)
    engine.reprime_s = 0.0
    rate = engine.path.device_rate
    spare_s = (engine.ring.fill - engine.ring_target // 2) / rate / ROLLBACK_COST_MARGIN - engine.write_s
    assert engine.write_s > 0 and spare_s > 0
    lacking = engine.decoder.emitted_frames + engine.decoder.frames_per_pull - engine.stream.frames_complete
    engine.step_s = spare_s / (lacking + 10) * 0.99  # ten steps again, with the rest of the chunk, just fit
    assert engine._can_regenerate(0) and engine._can_regenerate(10)
    assert not engine._can_regenerate(11)
    assert engine._affordable_rollback(40) == 10


def step_past_the_unplayed(engine, steps: int) -> None:
    while engine.performance.next_step - engine.decoder.emitted_frames - engine.max_delay < steps:
        engine._step()


def test_a_change_rolls_back_as_far_as_the_ring_can_pay(server) -> None:
    engine = server.engine
    with engine.stream.steering():
        engine._produce_chunk()
        fill_ring(engine, 4)
        step_past_the_unplayed(engine, 2)
        first_unplayed = engine.decoder.emitted_frames + engine.max_delay
        engine.reprime_s = 0.0
        affordable = engine.performance.next_step - first_unplayed - 1  # all but one step
        rate = engine.path.device_rate
        spare_s = (engine.ring.fill - engine.ring_target // 2) / rate / ROLLBACK_COST_MARGIN - engine.write_s
        lacking = engine.decoder.emitted_frames + engine.decoder.frames_per_pull - engine.stream.frames_complete
        assert spare_s > 0 and lacking + affordable > 0
        engine.step_s = spare_s / (lacking + affordable) * 0.99
        server.control.submit([server.control.change("/steer/timbre", 2.0)], "test", "knob")
        engine._take_events()
    assert engine.performance.last_change_step == first_unplayed + 1  # a step past the first unplayed, not the next
    assert engine.deferred_rollbacks == 1


def test_a_knob_resent_at_its_value_rolls_nothing_back(server) -> None:
    """A fader resent at its value, or a flood of one value (issue 21), moves nothing: it
    costs no rollback, counts as none deferred, and leaves a later real move free to roll
    back as far as before."""
    engine = server.engine
    with engine.stream.steering():
        engine._produce_chunk()
        engine.step_s = 0.001
        turn_timbre(server, 2.0)
        changed_at = engine.performance.last_change_step
        for _ in range(3):
            step_past_the_unplayed(engine, 3)
            before, after = turn_timbre(server, 2.0)
            assert after == before  # nothing generated again
        assert engine.deferred_rollbacks == 0 and engine.performance.last_change_step == changed_at
        step_past_the_unplayed(engine, 3)
        before, after = turn_timbre(server, -2.0)
    assert after < before and after == engine.decoder.emitted_frames
