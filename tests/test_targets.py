"""The control table drives every surface: what it defines, OSC reaches, the front parses
the same way, MIDI binds, scenes save and recall, and the performance log accepts.
A new /gen/* setting is one row of ``SETTINGS``: these tests pick it up from there."""

from __future__ import annotations

import mido
import pytest

from bridge.live.commands import Commands, Origin
from bridge.live.control import ConceptKnob, ControlError, ControlState
from bridge.live.midi import MidiMapper
from bridge.live.midimaps import Binding, ControllerMap, MidiMapError
from bridge.live.oscfront import ParsedMessage, pack_message, unpack_message
from bridge.live.performance_log import _check_change
from bridge.live.scenes import SceneStore
from bridge.live.targets import SETTINGS, ControlTable, Setting
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.timeline import CHANGE_KINDS, Change

OSC = Origin("osc 127.0.0.1:1")


def rig(tmp_path, *bindings: Binding) -> tuple[ControlState, Commands, MidiMapper]:
    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0))], "p", SamplingSettings(), vocab_size=2048)
    commands = Commands(control, SceneStore(tmp_path / "scenes"), lambda: {})
    return control, commands, MidiMapper(ControllerMap("t", list(bindings)), commands)


def inside(setting: Setting, table: ControlTable) -> float | int:
    """A value inside the setting's valid range and its MIDI span, away from the defaults."""
    lo, hi = table[f"/gen/{setting.name}"].span or (0.0, 1.0)
    value = lo + 0.3 * (hi - lo)
    return round(value) if setting.whole else value


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_every_setting_is_reachable_by_osc_bindable_by_midi_and_saved_by_scenes(tmp_path, setting) -> None:
    address = f"/gen/{setting.name}"
    control, commands, mapper = rig(tmp_path, Binding(cc=20, target=address, takeover="jump"))
    table = control.table
    value = inside(setting, table)
    assert setting.name in CHANGE_KINDS  # the engine's timeline takes it

    # OSC, in-process and as the front parses it (the same table, built from its spec)
    front = ControlTable.from_spec(table.spec())
    assert list(front) == list(table) and front.parse(address, [value]) == table.parse(address, [value])
    commands.run(address, [value], OSC)
    assert getattr(control.settings, setting.field) == value
    assert table[address].feedback == address and table[address].read(control.asked()) == value

    # scenes: saved, and recalled after the setting moved
    commands.run("/scene/save", ["with_it"], OSC)
    commands.run(address, [inside(setting, table) * 2 or 1], OSC)
    commands.run("/scene/recall", ["with_it"], OSC)
    assert getattr(control.settings, setting.field) == value

    # MIDI: the binding resolved to the target when the map loaded; a full turn is its span's top
    (bound,) = mapper.controls
    assert bound.target is table[address]
    mapper.handle(mido.Message("control_change", control=20, value=127))
    assert getattr(control.settings, setting.field) == pytest.approx((table[address].span or (0.0, 0.0))[1])

    # the performance log takes what the engine was sent
    for event in control.drain():
        for change in event.changes:
            _check_change(change)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_the_table_refuses_what_sampling_settings_refuses(setting) -> None:
    table = ControlTable([], vocab_size=2048)
    lo, hi = (int(v) if setting.whole else v for v in table[f"/gen/{setting.name}"].range or ())
    for edge in (lo, hi):
        table.parse(f"/gen/{setting.name}", [edge])
        SamplingSettings(**{setting.field: edge}).validate()
    below = lo - 1
    with pytest.raises(ControlError, match=setting.name):
        table.parse(f"/gen/{setting.name}", [below])
    with pytest.raises(ValueError):
        SamplingSettings(**{setting.field: below}).validate()
    if setting.valid[1] is not None:  # top_k's top is the vocabulary's, which only the table knows
        with pytest.raises(ControlError):
            table.parse(f"/gen/{setting.name}", [hi + 1])
        with pytest.raises(ValueError):
            SamplingSettings(**{setting.field: hi + 1}).validate()


def test_the_server_runs_what_the_front_parsed(tmp_path) -> None:
    control, commands, _ = rig(tmp_path)
    calls = control.table.parse("/steer/*/knob", [0.75])
    record = pack_message(1.0, ("127.0.0.1", 5), "/steer/*/knob", calls)
    arrived, sender, parsed = unpack_message(record, 0)
    assert (arrived, sender) == (1.0, ("127.0.0.1", 5))
    assert parsed == ParsedMessage("/steer/*/knob", (("/steer/timbre/knob", (0.75,)),))
    commands.execute(parsed.address, [(control.table[a], args) for a, args in parsed.calls], OSC)
    (event,) = control.drain()
    assert event.changes == (Change("alpha", 3.0, "timbre"),) and event.label == "/steer/*/knob"


def test_a_map_can_bind_only_what_a_control_can_drive(tmp_path) -> None:
    for target in ("/status", "/scene/save", "/nowhere"):
        with pytest.raises(MidiMapError, match="MIDI control can drive"):
            rig(tmp_path, Binding(cc=1, target=target))
    _, _, mapper = rig(tmp_path, Binding(cc=1, target="/steer/@1/on", button=True),
                       Binding(cc=2, target="/steer/@5/knob"))
    assert [c.target.address for c in mapper.controls] == ["/steer/timbre/on"] and mapper.unbound == ["/steer/@5/knob"]
