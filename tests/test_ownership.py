"""One owner for each piece of live state, and one way to change it.

A knob has three values with three meanings, each held in one place:
* asked: ``ControlState`` (what the last message said; status, feedback, pickup, scenes);
* scheduled: ``Performance.targets`` (where the knob is headed, on the step timeline);
* played: the ``Steerer``'s knob table (the smoothed value the hooks read).
Everything else reads one of these; these tests fail if a second copy comes back."""

from __future__ import annotations

import pytest

from bridge.live.control import ConceptKnob, ControlState
from bridge.live.serve import ServeOptions, Server
from steering_core.stream.sampling import SamplingSettings


def test_the_asked_state_changes_only_through_submit() -> None:
    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0))], "drums", SamplingSettings())
    with pytest.raises(TypeError):
        control.targets["timbre"] = 3.0  # type: ignore[index]
    with pytest.raises(TypeError):
        control.enabled["timbre"] = False  # type: ignore[index]
    control.submit([control.change("/steer/timbre", 3.0), control.change("/steer/timbre/on", False)], "test", "t")
    assert control.targets == {"timbre": 3.0} and control.enabled == {"timbre": False}
    control.submit([control.change("/steer/timbre/knob", 0.5)], "test", "t")
    control.submit([control.change("/gen/temperature", 0.7)], "test", "t")
    from steering_core.stream.timeline import Change
    control.submit([Change("panic")], "test", "panic")
    assert control.targets == {"timbre": 0.0}
    assert [len(e.changes) for e in control.drain()] == [2, 1, 1, 1]  # every change also went to the engine


def test_status_reports_the_played_alpha_from_its_owner(tiny, vectors_dir, tmp_path) -> None:
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False)
    server = Server(options, handle=tiny)
    try:
        engine = server.engine
        assert not hasattr(engine, "alphas")  # no published copy to go stale
        steerer = engine.performance.steerer
        assert steerer is not None
        steerer.set_alpha("timbre", 1.25)
        assert engine.status()["alphas"]["timbre"] == 1.25 == steerer.alpha("timbre")
        # the asked state is another thing: nothing was asked
        assert server.control.targets["timbre"] == 0.0
    finally:
        server.stop()
