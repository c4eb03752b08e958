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


def test_prompt_and_settings_are_read_as_copies_and_change_only_through_submit() -> None:
    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0))], "drums", SamplingSettings())
    with pytest.raises(AttributeError):
        control.prompt = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        control.settings = SamplingSettings()  # type: ignore[misc]
    handed_out = control.settings
    handed_out.top_k = 5  # a reader's copy: the asked state does not move
    assert control.settings.top_k == 250 and control.asked().settings["top_k"] == 250
    control.submit([control.change("/prompt", "pads"), control.change("/gen/top_k", 7)], "test", "t")
    assert control.prompt == "pads" and control.settings.top_k == 7 and handed_out.top_k == 5


def test_midi_reads_the_asked_state_under_its_lock(tmp_path) -> None:
    import threading

    import mido

    from bridge.live.commands import Commands
    from bridge.live.midi import MidiMapper
    from bridge.live.midimaps import Binding, ControllerMap
    from bridge.live.scenes import SceneStore

    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0))], "drums", SamplingSettings())
    commands = Commands(control, SceneStore(tmp_path), lambda: {})
    encoder = Binding(cc=9, target="/gen/top_k", mode="relative_offset", step=0.1)
    mapper = MidiMapper(ControllerMap("t", [encoder]), commands)
    with control._lock:  # as if a control thread were half-way through submit
        turn = threading.Thread(target=mapper.handle, args=(mido.Message("control_change", control=9, value=63),))
        turn.start()
        turn.join(0.3)
        assert turn.is_alive()  # the encoder waits to read where top_k is: no unlocked read
    turn.join(5)
    assert control.settings.top_k == round(1 + 0.9 * 249)  # from 250 (the span's top), one tick of 0.1 down


def test_a_binding_is_configuration_and_the_mapper_holds_the_live_state() -> None:
    from dataclasses import FrozenInstanceError, fields

    from bridge.live.midi import Pickup
    from bridge.live.midimaps import Binding

    binding = Binding(cc=1, target="/steer/@1/knob")
    with pytest.raises(FrozenInstanceError):
        binding.cc = 2  # type: ignore[misc]
    live = {f.name for f in fields(Pickup)}
    assert live == {"position", "picked_up", "last_raw", "msb"} and not live & {f.name for f in fields(Binding)}


def test_the_performance_log_is_written_by_one_thread(tmp_path) -> None:
    import threading

    from bridge.live.control import ControlEvent
    from bridge.live.performance_log import PerformanceLog

    log = PerformanceLog(tmp_path / "p.jsonl", {})
    log.event(ControlEvent((), "test", "t"), 0.0)  # this thread writes it from now on
    errors: list[BaseException] = []

    def end_elsewhere() -> None:
        try:
            log.end(0, "")
        except RuntimeError as exc:
            errors.append(exc)

    other = threading.Thread(target=end_elsewhere, name="main-thread-of-serve")
    other.start()
    other.join()
    assert len(errors) == 1 and "'main-thread-of-serve'" in str(errors[0]) and not log.closed
    log.end(0, "")
    assert log.closed


def test_osc_subscribers_are_read_as_a_copy_under_their_lock(tmp_path) -> None:
    from bridge.live.commands import Commands, Origin
    from bridge.live.osc import OscServer
    from bridge.live.scenes import SceneStore

    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0))], "drums", SamplingSettings())
    server = OscServer(Commands(control, SceneStore(tmp_path), lambda: {}), "127.0.0.1", 0)
    try:
        server._subscribe("127.0.0.1", 9, Origin("osc 127.0.0.1:9", ("127.0.0.1", 9)), True)
        server.subscribers.clear()  # a reader's copy
        assert list(server.subscribers) == [("127.0.0.1", 9)]
        with server._subscribers_lock:  # held by osc: a reader on another thread waits
            import threading

            reader = threading.Thread(target=lambda: server.subscribers)
            reader.start()
            reader.join(0.2)
            assert reader.is_alive()
        reader.join(5)
    finally:
        server.stop()


def test_transport_and_knobs_have_one_owner_each_on_the_bridge(tiny, vectors_dir, tmp_path) -> None:
    """Transport is the engine's (no copy in ControlState); a knob is asked in ControlState,
    scheduled in the performance, played in the steerer, and the bridge reads each from
    its owner, the static stream's per-stream table included."""
    from bridge.live.commands import Origin

    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs="off")
    server = Server(options, handle=tiny)
    try:
        engine, control = server.engine, server.control
        assert not hasattr(control, "playing")
        with pytest.raises(AttributeError):
            engine.playing = False  # type: ignore[misc]
        osc = Origin("osc 127.0.0.1:1")
        with engine.stream.steering():  # the engine thread is never started: this thread drives it
            server.commands.run("/transport/stop", [], osc)
            assert engine.playing is True and server.status()["transport"] == "play"  # not yet taken
            engine._take_events()
            assert engine.playing is False and server.status()["transport"] == "stop"
            server.commands.run("/transport/play", [], osc)
            server.commands.run("/steer/timbre", [2.0], osc)
            engine._take_events()
            assert engine.playing is True
            assert control.targets["timbre"] == 2.0 == engine.performance.targets["timbre"]  # asked, scheduled
            for _ in range(3):
                engine._step()
            steerer = engine.performance.steerer
            assert steerer is not None
            played = steerer.alpha("timbre")
            assert 0.0 < played < 2.0 and engine.status()["alphas"]["timbre"] == round(played, 4)
    finally:
        server.stop()


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
