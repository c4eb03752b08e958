"""MIDI mapping: CC to targets through a controller map, with the behaviours real controllers need."""

import json

import mido
import pytest

from bridge.live.commands import Commands
from bridge.live.control import ConceptKnob, ControlState
from bridge.live.midi import MidiMapper, relative_delta
from bridge.live.midimaps import MidiMapError, available_maps, load_map, save_map
from bridge.live.scenes import SceneStore
from steering_core.stream.sampling import SamplingSettings

MAP = """
name: test
channel: 1
controls:
  - {cc: 21, target: /steer/@1/knob}
  - {cc: 22, target: /steer/@2, range: [-2, 2]}
  - {cc: 1, lsb: 33, target: /steer/@1/knob, takeover: jump}
  - {cc: 30, target: /steer/@1/knob, mode: relative_twos, step: 0.1}
  - {cc: 31, target: /steer/@1/knob, mode: relative_offset, step: 0.1}
  - {cc: 32, target: /steer/@1/knob, mode: relative_signed, step: 0.1}
  - {cc: 40, target: /steer/@2/on, button: true}
  - {cc: 41, target: /panic, button: true}
  - {cc: 23, target: /steer/@9/knob}
  - {cc: 24, target: /gen/top_k, range: [10, 250]}
program_change: scenes
"""


def cc(control: int, value: int, channel: int = 0) -> mido.Message:
    return mido.Message("control_change", channel=channel, control=control, value=value)


@pytest.fixture
def rig(tmp_path):
    control = ControlState([ConceptKnob("timbre", (-6.0, 6.0)), ConceptKnob("tempo", (-4.0, 4.0))], "p",
                           SamplingSettings())
    (tmp_path / "map.yaml").write_text(MAP)
    scenes = SceneStore(tmp_path / "scenes")
    commands = Commands(control, scenes, lambda: {})
    mapper = MidiMapper(load_map(str(tmp_path / "map.yaml")), commands)
    commands.midi_learn = mapper.learn
    return control, mapper, scenes, commands


def test_absolute_knob_spans_the_concept_range(rig) -> None:
    control, mapper, _, _ = rig
    mapper.handle(cc(21, 127))
    assert control.targets["timbre"] == 6.0
    mapper.handle(cc(21, 0))
    assert control.targets["timbre"] == -6.0
    mapper.handle(cc(22, 127))
    assert control.targets["tempo"] == 2.0  # the map's own range
    mapper.handle(cc(24, 0))
    assert control.settings.top_k == 10
    assert mapper.unbound == ["/steer/@9/knob"]  # only two concepts loaded


def test_other_channels_and_unmapped_messages_are_ignored(rig) -> None:
    control, mapper, _, _ = rig
    mapper.handle(cc(21, 127, channel=5))
    mapper.handle(cc(99, 127))
    mapper.handle(mido.Message("note_on", note=60, velocity=100))
    mapper.handle(mido.Message("sysex", data=[1, 2, 3]))
    mapper.handle(mido.Message("clock"))
    assert control.targets == {"timbre": 0.0, "tempo": 0.0} and mapper.ignored == 5 and control.errors == 0


def test_fourteen_bit_pairs(rig) -> None:
    control, mapper, _, _ = rig
    mapper.handle(cc(1, 64))
    assert control.targets["timbre"] == pytest.approx(-6 + 12 * (64 << 7) / 16383)
    mapper.handle(cc(33, 127))
    assert control.targets["timbre"] == pytest.approx(-6 + 12 * ((64 << 7) | 127) / 16383)
    mapper.handle(cc(1, 127))
    mapper.handle(cc(33, 127))
    assert control.targets["timbre"] == 6.0


@pytest.mark.parametrize(("mode", "up", "down"), [("relative_twos", 1, 127), ("relative_offset", 65, 63),
                                                   ("relative_signed", 1, 65)])
def test_relative_encoder_modes(mode, up, down) -> None:
    assert relative_delta(up, mode) == 1 and relative_delta(down, mode) == -1
    assert relative_delta(up + 2, mode) == 3


@pytest.mark.parametrize("control_number", [30, 31, 32])
def test_relative_encoders_move_from_where_the_target_is(rig, control_number) -> None:
    control, mapper, _, commands = rig
    from bridge.live.commands import Origin

    commands.run("/steer/timbre/knob", [0.5], Origin("osc"))
    up = {30: 2, 31: 66, 32: 2}[control_number]
    mapper.handle(cc(control_number, up))  # +2 ticks of 0.1
    assert control.targets["timbre"] == pytest.approx(-6 + 12 * 0.7)


def test_soft_takeover_waits_for_the_knob_to_reach_the_value(rig) -> None:
    control, mapper, _, commands = rig
    from bridge.live.commands import Origin

    mapper.handle(cc(21, 10))  # the knob is low
    commands.run("/steer/timbre/knob", [0.8], Origin("osc"))  # the music moved on (OSC, a scene...)
    for v in (20, 40, 60, 90):  # turning up, still below 0.8 * 127 = 101.6
        mapper.handle(cc(21, v))
        assert control.targets["timbre"] == pytest.approx(-6 + 12 * 0.8)
    mapper.handle(cc(21, 105))  # crossed the value: picked up
    assert control.targets["timbre"] == pytest.approx(-6 + 12 * 105 / 127)
    mapper.handle(cc(21, 50))
    assert control.targets["timbre"] == pytest.approx(-6 + 12 * 50 / 127)


def test_buttons_toggle_and_panic(rig) -> None:
    control, mapper, _, _ = rig
    mapper.handle(cc(40, 127))
    assert control.enabled["tempo"] is False
    mapper.handle(cc(40, 0))  # release does nothing
    mapper.handle(cc(40, 127))
    assert control.enabled["tempo"] is True
    mapper.handle(cc(21, 127))
    mapper.handle(cc(41, 127))
    assert control.targets == {"timbre": 0.0, "tempo": 0.0}


def test_program_change_recalls_scenes_in_name_order(rig) -> None:
    control, mapper, scenes, _ = rig
    scenes.save("zz_mine", {"targets": {"timbre": 1.5, "tempo": -1.0}, "enabled": {}, "prompt": "p"})
    names = scenes.names()
    mapper.handle(mido.Message("program_change", program=names.index("zz_mine")))
    assert control.targets == {"timbre": 1.5, "tempo": -1.0}
    mapper.handle(mido.Message("program_change", program=127))
    assert control.errors == 1 and "no scene" in control.last_error


def test_midi_learn_binds_the_next_moved_cc(rig) -> None:
    control, mapper, _, commands = rig
    from bridge.live.commands import Origin

    commands.run("/midi/learn", ["/steer/tempo/knob"], Origin("osc"))
    mapper.handle(cc(77, 127, channel=3))
    assert control.targets["tempo"] == 4.0
    mapper.handle(cc(77, 0, channel=3))
    assert control.targets["tempo"] == -4.0


def test_learned_bindings_save_as_a_map_that_serve_can_load(rig, tmp_path, monkeypatch) -> None:
    _, mapper, _, commands = rig
    from bridge.live.commands import Origin

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    commands.midi_save = mapper.save
    commands.run("/midi/learn", ["/steer/tempo/knob"], Origin("osc"))
    mapper.handle(cc(77, 127, channel=3))
    assert commands.run("/midi/save", ["my-set"], Origin("osc")) == [("/midi/saved", ["my-set"])]
    path = tmp_path / "data" / "steerbridge" / "mappings" / "my-set.yaml"
    text = path.read_text()
    assert "/steer/@1/knob" in text and "/steer/@9/knob" in text  # the map's own slots kept as written
    assert "my-set" in available_maps()

    saved = load_map("my-set")
    original = load_map(str(tmp_path / "map.yaml"))
    assert len(saved.bindings) == len(original.bindings) + 1 and saved.program_change == "scenes"
    (learned,) = [b for b in saved.bindings if b.cc == 77]
    assert (learned.cc, learned.channel, learned.target, learned.takeover) == (77, 3, "/steer/tempo/knob", "jump")

    # A fresh set, started with the saved map, answers the learned control at once.
    fresh = ControlState([ConceptKnob("timbre", (-6.0, 6.0)), ConceptKnob("tempo", (-4.0, 4.0))], "p",
                         SamplingSettings())
    again = MidiMapper(saved, Commands(fresh, SceneStore(tmp_path / "scenes"), lambda: {}))
    again.handle(cc(77, 0, channel=3))
    assert fresh.targets["tempo"] == -4.0
    # A set that loads other concepts keeps the learned control unbound, not an error.
    other = ControlState([ConceptKnob("mood", (-1.0, 1.0))], "p", SamplingSettings())
    assert "/steer/tempo/knob" in MidiMapper(saved, Commands(other, SceneStore(tmp_path / "s2"), lambda: {})).unbound


def test_every_binding_field_survives_a_save(tmp_path) -> None:
    original = load_map_text(tmp_path, MAP)
    path = save_map("roundtrip", original.bindings, original.program_change, folder=tmp_path / "maps")
    again = load_map(str(path))
    assert again.bindings == original.bindings and again.program_change == original.program_change


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x" * 300])
def test_midi_save_refuses_paths_and_bad_names(rig, tmp_path, monkeypatch, name) -> None:
    _, mapper, _, commands = rig
    from bridge.live.commands import Origin
    from bridge.live.control import ControlError

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    commands.midi_save = mapper.save
    with pytest.raises(ControlError):
        commands.run("/midi/save", [name], Origin("osc"))
    assert not (tmp_path / "data").exists()


def test_midi_save_without_midi_or_writable_folder_is_a_clear_error(rig, tmp_path, monkeypatch) -> None:
    _, mapper, _, commands = rig
    from bridge.live.commands import Origin
    from bridge.live.control import ControlError

    with pytest.raises(ControlError, match="needs a MIDI input"):
        commands.run("/midi/save", ["x"], Origin("osc"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker))
    commands.midi_save = mapper.save
    with pytest.raises(ControlError, match="cannot save controller map"):
        commands.run("/midi/save", ["x"], Origin("osc"))


def load_map_text(tmp_path, text: str):
    (tmp_path / "src.yaml").write_text(text)
    return load_map(str(tmp_path / "src.yaml"))


def test_every_shipped_map_loads() -> None:
    names = available_maps()
    assert {"generic", "nanokontrol2", "launchcontrol_xl", "midimix", "beatstep"} <= set(names)
    for name in names:
        assert load_map(name).bindings


@pytest.mark.parametrize("text", ["controls: 3", "controls: [{cc: 200, target: /panic}]",
                                  "controls: [{cc: 1, target: /x, mode: weird}]", "channel: 17\ncontrols: []",
                                  "controls: [{cc: 1, target: /steer/@1/knob, curve: wobbly}]", "{{{"])
def test_bad_maps_are_clear_errors(tmp_path, text) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(MidiMapError):
        load_map(str(tmp_path / "bad.yaml"))
    with pytest.raises(MidiMapError, match="no paths"):
        load_map("../etc/passwd")


def test_scene_files_are_written_whole(rig, tmp_path) -> None:
    _, _, scenes, _ = rig
    path = scenes.save("one", {"targets": {"timbre": 1.0}, "enabled": {}, "prompt": "p"})
    assert json.loads(path.read_text())["targets"] == {"timbre": 1.0}


def test_osc_changes_to_bindings_wait_for_the_midi_threads_lock(rig) -> None:
    import threading

    from bridge.live.commands import Origin

    control, mapper, _, commands = rig
    mapper.handle(cc(21, 64))  # picked up, position set
    binding = next(c.live for c in mapper.controls if c.binding.cc == 21)
    assert binding.position is not None
    with mapper._lock:  # as if rtmidi's thread were half-way through a message
        osc = threading.Thread(target=commands.run, args=("/steer/timbre", [1.0], Origin("osc 127.0.0.1:1")))
        osc.start()
        osc.join(0.3)
        assert binding.position is not None  # not changed under the MIDI thread's feet
    osc.join(5)
    assert binding.position is None and control.targets["timbre"] == 1.0


def test_unmapped_program_changes_are_logged_rate_limited(rig, caplog) -> None:
    control, mapper, _, _ = rig
    for _ in range(100):
        mapper.handle(mido.Message("program_change", program=99))
    assert control.errors == 100
    assert len([r for r in caplog.records if "program change" in r.getMessage()]) <= 5


def test_an_unterminated_sysex_is_cut_at_the_next_status_byte() -> None:
    from bridge.live.midi_port import split_held

    assert split_held([0xF0, 1, 2, 0xB0, 21, 5, 0xF8, 0xB0, 21, 6, 0xF7]) == ([[0xB0, 21, 5], [0xF8], [0xB0, 21, 6]], True)
    # a whole sysex stays whole; real-time bytes inside it are messages of their own
    assert split_held([0xF0, 1, 0xF8, 2, 0xF7]) == ([[0xF0, 1, 2, 0xF7], [0xF8]], False)
    assert split_held([0xF7]) == ([], False)  # a terminator's lone end byte is nothing
    assert split_held([0xB0, 1, 2]) == ([[0xB0, 1, 2]], False)


def test_an_unterminated_sysex_does_not_swallow_the_next_ccs(jack, rig, monkeypatch, caplog) -> None:
    """Issue 21 item 9: ``F0 01 02`` and no ``F7``, then CCs; rtmidi held every one of them."""
    import time

    import rtmidi

    from bridge.live.midi import MidiInput

    for k, v in jack.items():
        monkeypatch.setenv(k, v)
    control, mapper, _, _ = rig
    midi = MidiInput("virtual", mapper, api="jack", client_name="sysex-test")
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "sysex-sender")
    try:
        out.open_port(next(i for i, n in enumerate(out.get_ports()) if "sysex-test" in n))
        time.sleep(0.2)
        out.send_message([0xF0, 0x01, 0x02])
        for value in (10, 60, 127):
            time.sleep(0.05)
            out.send_message([0xB0, 21, value])
        deadline = time.monotonic() + 3
        while control.targets["timbre"] != 6.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert control.targets["timbre"] == 6.0
        assert midi.sysex_dropped == 1
        assert [r.message for r in caplog.records].count(caplog.records[-1].message) == 1
        assert "without its end" in caplog.text
    finally:
        out.close_port()
        out.delete()
        midi.close()


STEM_MAP = """
stems: {drums: 10, bass: 2}
controls:
  - {cc: 21, target: /steer/@1/knob}
  - {cc: 22, target: /steer/timbre/knob, stem: bass, channel: 1}
  - {cc: 23, target: /steer/timbre/knob, channel: 3}
"""


def stem_rig(tmp_path, text: str):
    from bridge.live.control import StemView

    knob = ConceptKnob("timbre", (-6.0, 6.0))
    views = [StemView(name, {"timbre": knob}, f"{name} prompt") for name in ("drums", "bass")]
    control = ControlState([knob], "p", SamplingSettings(), stems=views)
    (tmp_path / "map.yaml").write_text(text)
    mapper = MidiMapper(load_map(str(tmp_path / "map.yaml"), ["drums", "bass"]),
                        Commands(control, SceneStore(tmp_path / "scenes"), lambda: {}))
    return views, mapper


def test_a_stem_channel_moves_that_stems_knob_only(tmp_path) -> None:
    (drums, bass), mapper = stem_rig(tmp_path, STEM_MAP)
    mapper.handle(cc(21, 127, channel=9))  # MIDI channel 10: drums
    assert drums.targets["timbre"] == 6.0 and bass.targets.get("timbre", 0.0) == 0.0
    mapper.handle(cc(21, 0, channel=1))  # channel 2: bass
    assert bass.targets["timbre"] == -6.0 and drums.targets["timbre"] == 6.0
    mapper.handle(cc(21, 64, channel=4))  # a channel no stem has: ignored, not every stem
    assert drums.targets["timbre"] == 6.0 and bass.targets["timbre"] == -6.0
    mapper.handle(cc(22, 127, channel=0))  # stem: bass, on its own channel
    assert bass.targets["timbre"] == 6.0 and drums.targets["timbre"] == 6.0
    mapper.handle(cc(23, 0, channel=2))  # its own channel: unprefixed, as today (every stem)
    assert drums.targets["timbre"] == -6.0 and bass.targets["timbre"] == -6.0


def test_a_stem_message_is_applied_once(tmp_path) -> None:
    _, mapper = stem_rig(tmp_path, STEM_MAP)
    assert sorted((b.channel, b.target) for b in (c.binding for c in mapper.controls) if b.cc == 21) == [
        (1, "/stem/bass/steer/@1/knob"), (9, "/stem/drums/steer/@1/knob")]


def test_a_map_names_a_stem_added_later_and_acts_on_it_once_it_plays(tmp_path) -> None:
    """One map for the whole set: keys' controls do nothing before /stem/add keys, act on
    keys' row once it is in (the server hands the mapper the new table), and stop when it leaves."""
    from bridge.live.control import StemView

    knob = ConceptKnob("timbre", (-6.0, 6.0))
    views = [StemView("drums", {"timbre": knob}, "d"), StemView("spare1", {"timbre": knob}, "s", active=False)]
    control = ControlState([knob], "p", SamplingSettings(), stems=views)
    (tmp_path / "map.yaml").write_text("stems: {drums: 10, keys: 3}\ncontrols:\n  - {cc: 21, target: /steer/@1/knob}\n"
                                       "  - {cc: 22, target: /stem/keys/mute, button: true}\n"
                                       "  - {cc: 23, target: /transport/play, button: true}\n")
    controller = load_map(str(tmp_path / "map.yaml"), ["drums"])
    assert controller.later_stems == ("keys",)  # serve logs them, once (tests/test_stems_jack.py)
    commands = Commands(control, SceneStore(tmp_path / "scenes"), lambda: {})
    mapper = MidiMapper(controller, commands)
    assert sorted(mapper.unbound) == ["/stem/keys/mute", "/stem/keys/steer/@1/knob"]
    # A shared target and one that names its stem are left as written, not put under each stem.
    assert sorted(c.target.address for c in mapper.controls) == ["/stem/drums/steer/timbre/knob", "/transport/play"]
    mapper.handle(cc(21, 127, channel=2))  # keys' channel, before keys plays: nothing, and no error
    assert drums_view(control).targets.get("timbre", 0.0) == 0.0

    def retable(table) -> None:  # what Server._retable does when a stem comes or goes
        commands.retable(table)
        mapper.retable(table)

    keys = StemView("keys", {"timbre": knob}, "soft piano")
    retable(control.put_stem(1, keys))
    assert mapper.unbound == []
    mapper.handle(cc(21, 0, channel=2))
    assert keys.targets["timbre"] == -6.0 and drums_view(control).targets.get("timbre", 0.0) == 0.0
    mapper.handle(cc(21, 127, channel=9))  # drums' control kept working throughout
    assert drums_view(control).targets["timbre"] == 6.0 and keys.targets["timbre"] == -6.0
    retable(control.put_stem(1, StemView("spare1", {"timbre": knob}, "s", active=False)))  # /stem/remove keys
    assert sorted(mapper.unbound) == ["/stem/keys/mute", "/stem/keys/steer/@1/knob"]
    mapper.handle(cc(21, 127, channel=2))
    assert keys.targets["timbre"] == -6.0


def drums_view(control: ControlState):
    return control._stems[0]


@pytest.mark.parametrize(("text", "stems", "error"), [
    ("stems: {../keys: 3}\ncontrols: []\n", ["drums"], "stem name '../keys' must be"),
    ("controls:\n  - {cc: 1, target: /steer/@1/knob, stem: spare1}\n", ["drums"], "stem name 'spare1' must be"),
    ("stems: {drums: 17}\ncontrols: []\n", ["drums"], "channel must be 1-16"),
    ("stems: {drums: 0}\ncontrols: []\n", ["drums"], "channel must be 1-16"),
    ("stems: {drums: 3, bass: 3}\ncontrols: []\n", ["drums", "bass"], "both on channel 3"),
    ("stems: {drums: 3}\ncontrols: []\n", [], "plays no stems"),
    ("controls:\n  - {cc: 1, target: /steer/@1/knob, stem: drums}\n", [], "plays no stems"),
])
def test_bad_stem_maps_are_refused(tmp_path, text, stems, error) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(MidiMapError, match=error) as exc:
        load_map(str(tmp_path / "bad.yaml"), stems)
    assert "\n" not in str(exc.value)


def test_serve_refuses_a_stem_map_without_stems(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text("stems: {drums: 10}\ncontrols: []\n")
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--midi-map", str(tmp_path / "bad.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "plays no stems" in done.stderr and len(done.stderr.strip().splitlines()) == 1
