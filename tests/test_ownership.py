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
    control.submit([control.alpha_change("timbre", 3.0), control.enabled_change("timbre", False)], "test", "t")
    assert control.targets == {"timbre": 3.0} and control.enabled == {"timbre": False}
    control.submit([control.knob_change("timbre", 0.5)], "test", "t")
    control.submit([control.setting_change("temperature", 0.7)], "test", "t")
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


def test_per_stream_knobs_are_the_steerers(tiny) -> None:
    """A batched static stream reads the steerer's own per-stream table: a knob turned for
    one stream is reported by the steerer for that stream (what /status reads), and the
    stream has no knob writer of its own."""
    from steering_core.errors import UserError
    from steering_core.steer.steerer import Steerer
    from steering_core.stream.static_step import StaticStream
    from tests.test_steering import make_vector

    steerer = Steerer(tiny)
    steerer.add(make_vector(tiny, concept="a"), alpha=0.5)
    stream = StaticStream(tiny, ["drums", "bass"], steerer=steerer)
    assert not hasattr(stream, "set_alpha") and not hasattr(stream, "set_enabled")
    assert stream.knobs.data_ptr() == steerer.stream_knobs(2).alpha.data_ptr()  # one table, the steerer's
    steerer.set_alpha("a", 2.0, stream=1)
    steerer.set_enabled("a", False, stream=0)
    assert steerer.alphas(stream=1) == {"a": 2.0} and steerer.alphas(stream=0) == {"a": 0.5}
    assert stream.knobs[:, 0].tolist() == [0.5, 2.0] and stream.knob_enabled[:, 0].tolist() == [0.0, 1.0]
    steerer.set_alpha("a", -1.0)  # every stream
    assert stream.knobs[:, 0].tolist() == [-1.0, -1.0] and steerer.alpha("a", stream=1) == -1.0
    with pytest.raises(UserError, match="stream"):
        steerer.set_alpha("a", 1.0, stream=2)
    with pytest.raises(UserError, match="2 streams"):
        steerer.stream_knobs(3)


def test_a_performance_is_its_steerers_only_knob_writer(tiny) -> None:
    """A bare steerer takes knob writes from anyone (a script); once a Performance drives
    it, a write beside the performance raises on any thread, naming the caller's thread and
    the performance's, while ``apply`` still moves the knob. The claim ends with the performance."""
    import gc
    import threading

    from steering_core.steer.steerer import Steerer
    from steering_core.stream.decode_loop import MusicStream
    from steering_core.stream.timeline import Change, Performance
    from tests.test_steering import make_vector

    steerer = Steerer(tiny)
    steerer.add(make_vector(tiny, concept="a"), alpha=0.0)
    steerer.set_alpha("a", 0.25)  # no driver yet: a script may turn knobs directly
    performance = Performance(MusicStream(tiny, "drums", seed=1, steerer=steerer), steerer, smoothing_ms=0)
    performance.step()
    me = threading.current_thread().name
    with pytest.raises(RuntimeError, match=f"thread '{me}'.*a Performance on thread '{me}'"):
        steerer.set_alpha("a", 1.0)
    with pytest.raises(RuntimeError, match="Performance"):
        steerer.set_enabled("a", False)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            steerer.set_alpha("a", 2.0)
        except RuntimeError as e:
            errors.append(e)

    thread = threading.Thread(target=other, name="control")
    thread.start()
    thread.join()
    assert len(errors) == 1 and "thread 'control'" in str(errors[0]) and f"thread '{me}'" in str(errors[0])
    assert steerer.alpha("a") == 0.25  # neither write landed
    performance.apply([Change("alpha", 1.5, "a")])
    performance.step()
    assert steerer.alpha("a") == 1.5
    del performance
    gc.collect()
    steerer.set_alpha("a", 0.0)  # the performance is gone, and its claim with it
    assert steerer.alpha("a") == 0.0
