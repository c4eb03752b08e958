"""Target knobs' asks without a model: the knob's span from the vector's calibration, a
pattern's every match, a scene recall taking knobs back from their targets, a one-stem
set's loop clamped to the stem's own range, and a set of stems' loops, one per stem."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from bridge.live.commands import Commands, Origin
from bridge.live.control import ConceptKnob, ControlError, ControlState, StemView
from bridge.live.scenes import SceneStore
from bridge.live.target_loop import TargetAsk, TargetLoop
from bridge.live.target_units import UNITS
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.timeline import Change

TEST = Origin("test")
CALIBRATED = {"alphas": [-2.0, -1.0, 0.0, 1.0], "measures": {"drum_bpm": [70.0, 80.0, 100.0, 120.0],
                                                              "centroid_hz": [900.0, 1000.0, 1400.0, 2000.0]}}


def vector(concept: str, calibration: dict | None, alpha_range=(-2.0, 0.5)):
    return SimpleNamespace(concept=concept, alpha_range=alpha_range, calibration=calibration, probe=None)


def commands(tmp_path, knobs, stems=()):
    control = ControlState(knobs, "a prompt", SamplingSettings(), stems=stems)
    return Commands(control, SceneStore(tmp_path), dict), control


def test_the_target_knob_spans_the_calibrated_reach_else_the_fixed_span(tmp_path, caplog):
    tempo = ConceptKnob.of(vector("tempo", CALIBRATED))  # drum_bpm at alpha -2 and 0.5 (interpolated)
    assert tempo.target_span == (70.0, 110.0)
    with caplog.at_level(logging.INFO, logger="steerbridge.control"):
        timbre = ConceptKnob.of(vector("timbre", None, (-1.0, 1.0)))
    assert timbre.target_span == UNITS["timbre"].knob and "no calibration" in caplog.text
    cmd, control = commands(tmp_path, [tempo, timbre])
    cmd.run("/steer/tempo/target/knob", [0.5], TEST)
    cmd.run("/steer/timbre/target/knob", [1.0], TEST)
    asks = [a for e in control.drain() for a in e.target or ()]
    assert asks == [TargetAsk("tempo", 90.0), TargetAsk("timbre", UNITS["timbre"].knob[1])]


def test_a_pattern_acts_on_every_target_it_names(tmp_path):
    cmd, control = commands(tmp_path, [ConceptKnob("tempo", (-2.0, 2.0)), ConceptKnob("timbre", (-1.0, 1.0))])
    cmd.run("/steer/*/target/off", [], TEST)
    [event] = control.drain()
    assert event.target == (TargetAsk("tempo"), TargetAsk("timbre"))


def test_a_scene_recall_takes_the_knob_back_even_at_the_stale_asked_alpha(tmp_path):
    cmd, control = commands(tmp_path, [ConceptKnob("tempo", (-2.0, 2.0))])
    cmd.run("/scene/save", ["s"], TEST)  # tempo at alpha 0, as asked
    cmd.run("/steer/tempo/target", [100.0], TEST)
    loop = TargetLoop({"tempo": (-2.0, 2.0)}, 32000, 1.5)
    for event in control.drain():
        loop.touched(event.changes)
        if event.target:
            loop.ask(event.target[0], {"tempo": 0.0})
    assert (0, "tempo") in loop.active
    cmd.run("/scene/recall", ["s", "off"], TEST)  # the same alpha 0 the target left asked
    [event] = control.drain()
    loop.touched(event.changes)
    assert (0, "tempo") not in loop.active
    assert [(c.kind, c.concept, c.value) for c in event.changes] == [("alpha", "tempo", 0.0)]


def test_a_one_stem_set_clamps_the_loop_to_the_stems_own_range(tmp_path):
    knobs = [ConceptKnob("tempo", (-8.0, 8.0))]
    stem = StemView("drums", {"tempo": ConceptKnob("tempo", (-1.0, 0.5))}, "drums")
    _, control = commands(tmp_path, knobs, stems=[stem])
    assert control.loop_ranges() == {"tempo": (-1.0, 0.5)}
    loop = TargetLoop(control.loop_ranges(), 32000, 1.5)
    loop.ask(TargetAsk("tempo", 240.0), {"tempo": 0.0})
    assert loop.active[(0, "tempo")].controller.settings.alpha_range == (-1.0, 0.5)


@pytest.mark.parametrize("calibration", [{"alphas": [0.0, 1.0], "measures": {}},
                                         {"alphas": [0.0, 1.0], "measures": {"drum_bpm": [120.0, 90.0]}}])
def test_a_calibration_without_a_rising_measure_falls_back(calibration):
    assert ConceptKnob.of(vector("tempo", calibration, (0.0, 1.0))).target_span == UNITS["tempo"].knob


def test_a_new_setpoint_jumps_to_the_calibrated_alpha_and_the_pi_waits_a_window(tmp_path):
    knob = ConceptKnob.of(vector("tempo", CALIBRATED, (-2.0, 1.0)))
    _, control = commands(tmp_path, [knob])
    loop = TargetLoop(control.loop_ranges(), 32000, 1.0, feedforward=control.loop_feedforward())
    loop.ask(TargetAsk("tempo", 90.0), {"tempo": 0.0})  # 80 -> 100 BPM over alpha -1 -> 0: -0.5
    quiet = [0.0] * 3200
    [change] = loop.heard(quiet, 0, None)
    assert (change.kind, change.concept, change.value) == ("alpha", "tempo", -0.5)
    assert loop.active[(0, "tempo")].controller.state.integral == -0.5  # the PI trims from there
    assert loop.heard(quiet, 3200, None) == []  # no reading over audio from before the jump
    loop.ask(TargetAsk("tempo", 500.0), {"tempo": -0.5})  # past the calibrated reach: the top end
    assert [c.value for c in loop.heard(quiet, 6400, None)] == [1.0]


def test_each_stems_loop_hears_its_own_row_and_sets_its_own_rows_alpha():
    # Two stems, a timbre target of 1000 Hz on each: row 0 plays a 300 Hz tone (too dark:
    # its alpha goes up), row 1 a 3000 Hz tone (too bright: down). One loop per row, each on
    # its own row's audio; every change names its row.
    rate = 32000
    t = np.arange(rate // 10) / rate
    dark, bright = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 3000 * t)
    loop = TargetLoop({"timbre": (-1.0, 1.0)}, rate, 1.0, streams=2)
    for row in (0, 1):
        loop.ask(TargetAsk("timbre", 1000.0, stream=row), {"timbre": 0.0})
    changes = []
    for i in range(40):  # 4 s of audio: a few beats of the loop
        changes += loop.heard_rows([dark, bright], i * len(t), None)
    by_row = {row: [c.value for c in changes if c.stream == row] for row in (0, 1)}
    assert by_row[0] and by_row[1] and all(c.concept == "timbre" and c.stream in (0, 1) for c in changes)
    assert by_row[0][-1] > 0.0 > by_row[1][-1]
    status = loop.status()["target_knobs"]
    assert status["timbre"]["measured"] < 1000.0 < status["1:timbre"]["measured"]
    # A plain write on one stem takes that stem's knob back; a panic without a row, every one.
    loop.touched([Change("alpha", 0.2, "timbre", 1)])
    assert list(loop.active) == [(0, "timbre")]
    loop.ask(TargetAsk("timbre", 1000.0, stream=1), {"timbre": 0.2})
    loop.touched([Change("panic")])
    assert not loop.active


def test_a_set_of_stems_takes_a_target_on_a_stems_own_address_only(tmp_path):
    knobs = [ConceptKnob("tempo", (-2.0, 0.5)), ConceptKnob("timbre", (-1.0, 1.0))]
    narrow = {"tempo": knobs[0], "timbre": ConceptKnob("timbre", (-0.25, 0.5))}  # bass's own, from its set file
    stems = [StemView("drums", {k.name: k for k in knobs}, "drums"), StemView("bass", narrow, "bass")]
    cmd, control = commands(tmp_path, knobs, stems=stems)
    before = control.snapshot()
    with pytest.raises(ControlError, match="/stem/<name>/steer/timbre/target"):
        cmd.run("/steer/timbre/target", [1500.0], TEST)
    with pytest.raises(ControlError, match="one-stem"):
        cmd.run("/sync/lock", [1], TEST)
    with pytest.raises(ControlError, match="beat warp plays on one stream"):
        cmd.run("/sync/lock/warp", [1], TEST)
    assert control.snapshot() == before and not control.drain()
    cmd.run("/stem/bass/steer/timbre/target", [1500.0], TEST)
    cmd.run("/stem/drums/steer/tempo/target/knob", [0.0], TEST)
    cmd.run("/stem/bass/steer/timbre/target/off", [], TEST)
    asks = [a for e in control.drain() for a in e.target or ()]
    assert asks == [TargetAsk("timbre", 1500.0, stream=1, alpha_range=(-0.25, 0.5)),
                    TargetAsk("tempo", UNITS["tempo"].knob[0], stream=0, alpha_range=(-2.0, 0.5)),
                    TargetAsk("timbre", stream=1)]
    loop = TargetLoop(control.loop_ranges(), 32000, 1.0, streams=2)
    loop.ask(asks[0], {"timbre": 0.0})  # the loop keeps bass's alpha within bass's own range
    assert loop.active[(1, "timbre")].controller.settings.alpha_range == (-0.25, 0.5)


def test_a_one_stem_sets_plain_target_is_its_stems_own_row_and_an_entering_stem_waits(tmp_path):
    # The set's one stem came in on row 1 (row 0 is spare again): a plain target, and the lock,
    # are that stem's, at its row, in its own range. A stem still waiting for its bar takes none.
    knobs = [ConceptKnob("tempo", (-2.0, 0.5)), ConceptKnob("timbre", (-1.0, 1.0))]
    own = {"tempo": knobs[0], "timbre": ConceptKnob("timbre", (-0.5, 0.5))}
    spare = StemView("spare0", {k.name: k for k in knobs}, "spare", active=False)
    cmd, control = commands(tmp_path, knobs, stems=[spare, StemView("keys", own, "keys")])
    cmd.run("/steer/timbre/target", [1500.0], TEST)
    cmd.run("/sync/lock", [1], TEST)
    asks = [a for e in control.drain() for a in e.target or ()]
    assert asks == [TargetAsk("timbre", 1500.0, stream=1, alpha_range=(-0.5, 0.5)),
                    TargetAsk("tempo", lock=True, stream=1)]
    cmd.stem_entering = lambda row: row == 1
    before = control.snapshot()
    with pytest.raises(ControlError, match="enters on the next bar"):
        cmd.run("/stem/keys/steer/timbre/target", [1500.0], TEST)
    assert control.snapshot() == before and not control.drain()


def test_the_warp_switch_asks_the_loop_and_refuses_what_is_not_on_or_off(tmp_path):
    cmd, control = commands(tmp_path, [ConceptKnob("tempo", (-2.0, 0.5))])
    cmd.run("/sync/lock/warp", [1], TEST)
    cmd.run("/sync/lock/warp", [0], TEST)
    assert [a for e in control.drain() for a in e.target or ()] == [TargetAsk("tempo", warp=True),
                                                                   TargetAsk("tempo", warp=False)]
    for bad in ([2], ["on"], [float("nan")], []):
        with pytest.raises(ControlError):
            cmd.run("/sync/lock/warp", bad, TEST)
    assert not control.drain()
