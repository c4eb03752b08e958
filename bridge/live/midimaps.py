"""Controller maps: the YAML files that bind a controller's CCs to control targets.

A map (``presets/mappings/<name>.yaml``, or one saved by ``/midi/save`` in
``~/.local/share/steerbridge/mappings``) binds CCs to the same addresses OSC uses (``targets.py``;
the mapper resolves each to its target when the map loads), so a knob and a fader in
a DAW go through one validation path::

    channel: 1                 # 1-16, or omitted for any channel
    controls:
      - cc: 16                 # knob 1
        target: /steer/@1/knob # @N: the N-th loaded concept
        range: [0, 1]          # optional: the target's values the knob spans
        curve: linear          # linear | exp | log | scurve
        mode: absolute         # absolute | relative_twos | relative_offset | relative_signed
        step: 0.01             # relative modes: change per encoder tick (of the 0..1 span)
        lsb: 48                # optional: 14-bit pair, this CC carries the low 7 bits
        takeover: pickup       # pickup (default for absolute) | jump
      - cc: 41
        target: /transport/play
        button: true           # fires on press (value >= 64)
    program_change: scenes     # program N recalls the N-th scene (sorted), or a {N: name} map

On a server playing a set of stems, a control can act on one stem's row of its target:
``stem: drums`` on a binding aims it at ``/stem/drums/<target>``. A map-level
``stems: {drums: 10, bass: 2}`` gives stems MIDI channels (1-16, one stem a channel): a binding
with neither its own ``stem`` nor its own ``channel`` then acts on the stem whose channel the
message came on. It is resolved when the map loads into one binding per stem, each on its
stem's channel, so a message matches one of them once; on a channel no stem has, such a
binding does nothing (its unprefixed form would act on every stem at once). Bindings with
their own ``channel`` or ``stem`` are left as written. A map using ``stem``/``stems`` on a server
that plays no stems is refused. A stem the set does not have (yet) is taken, if its name is a
stem's name, and said once: its controls do nothing until ``/stem/add`` brings a stem of that
name in, and act on it from then (``MidiMapper.retable``), so one map serves a whole set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from steering_core.errors import UserError
from steering_core.extract.concepts import ConceptError, check_name
from steering_core.paths import PRESETS_DIR, data_dir

from .presetfiles import preset_names, read_preset, write_atomically
from .setfile import SetFileError, check_stem_name

log = logging.getLogger("steerbridge.midi")

MAPPINGS_DIR = PRESETS_DIR / "mappings"
MODES = ("absolute", "relative_twos", "relative_offset", "relative_signed")


class MidiMapError(UserError):
    """A controller map that cannot be used, or a MIDI system that is not there."""


def curve(name: str) -> Callable[[float], float]:
    k = 3.0
    curves: dict[str, Callable[[float], float]] = {
        "linear": lambda x: x,
        "exp": lambda x: (math.exp(k * x) - 1) / (math.exp(k) - 1),
        "log": lambda x: math.log1p((math.exp(k) - 1) * x) / k,
        "scurve": lambda x: x * x * (3 - 2 * x),
    }
    if name not in curves:
        raise MidiMapError(f"unknown curve {name!r} (choose {', '.join(curves)})")
    return curves[name]


@dataclass(frozen=True)
class Binding:
    """One control of a map, as its file says it: configuration only. What the control
    is doing live (its position, pickup) is the mapper's (``midi.Pickup``)."""

    cc: int
    target: str  # as the map wrote it (``@N`` kept); a learned control's is the address itself
    range: tuple[float, float] | None = None
    curve: str = "linear"
    mode: str = "absolute"
    step: float = 0.01
    lsb: int | None = None
    takeover: str = "pickup"
    button: bool = False
    channel: int | None = None  # 0-15, None = any


@dataclass
class ControllerMap:
    name: str
    bindings: list[Binding]
    program_change: str | dict[int, str] | None = None
    #: Stems the map names that the server's set does not have yet: their controls stay
    #: unbound until ``/stem/add`` brings each in (``MidiMapper.retable``).
    later_stems: tuple[str, ...] = ()


def user_maps_dir() -> Path:
    """Where ``/midi/save`` writes maps: beside the saved scenes."""
    return data_dir("mappings")


def available_maps() -> list[str]:
    return preset_names([user_maps_dir(), MAPPINGS_DIR])


def load_map(spec: str, stems: Sequence[str] = ()) -> ControllerMap:
    """A map by name (a saved one first, then the shipped presets) or a .yaml path.

    ``stems``: the names of the server's stems, which ``stem:`` and ``stems:`` may name
    (none: a map naming a stem is refused)."""
    path, raw = read_preset(spec, [user_maps_dir(), MAPPINGS_DIR], "controller map", MidiMapError)
    if not isinstance(raw, dict) or not isinstance(raw.get("controls"), list):
        raise MidiMapError(f"controller map {path.name}: expected a mapping with a 'controls' list")
    channel = _channel(raw.get("channel"), path.name)
    bindings = [_binding(entry, channel, path.name) for entry in raw["controls"]]
    later: list[str] = []
    bindings = _stem_bindings(raw, bindings, list(stems), path.name, later)
    pc = raw.get("program_change")
    if pc is not None and pc != "scenes" and not isinstance(pc, dict):
        raise MidiMapError(f"controller map {path.name}: program_change must be 'scenes' or a number->scene map")
    if isinstance(pc, dict):
        pc = _program_scenes(pc, path.name)
    return ControllerMap(str(raw.get("name", path.stem)), bindings, pc, tuple(dict.fromkeys(later)))


def _stem_target(target: str, stem: str) -> str:
    return f"/stem/{stem}/{target.lstrip('/')}"


def _per_stem(target: str) -> bool:
    """Whether a target has a form under each stem (a stream's own: its knobs, switches,
    prompt and sampling settings). Others (transport, scenes, a ``/stem/<name>/`` address
    already) are shared or name their stem, and a stem's channel leaves them as written."""
    return target.startswith(("/steer/", "/gen/")) or target == "/prompt"


def _known_stem(name: Any, stems: list[str], where: str, later: list[str]) -> str:
    """A stem of the set, or a valid name for one added later (appended to ``later``)."""
    if not stems:
        raise MidiMapError(f"controller map {where}: names stem {str(name)[:40]!r}, but this server plays no "
                           "stems (--stem or a set file)")
    if name not in stems:
        try:
            check_stem_name(name, f"controller map {where}")
        except SetFileError as exc:
            raise MidiMapError(str(exc)) from None
        later.append(str(name))
    return str(name)


def _stem_bindings(raw: dict[Any, Any], bindings: list[Binding], stems: list[str], where: str,
                   later: list[str]) -> list[Binding]:
    """``stem:`` and ``stems:`` resolved (module doc): every binding aimed at its stem's row."""
    by_channel: dict[int, str] = {}
    given = raw.get("stems")
    if given is not None:
        if not isinstance(given, dict) or not given:
            raise MidiMapError(f"controller map {where}: stems must map stem names to MIDI channels 1-16")
        for name, ch in given.items():
            name = _known_stem(name, stems, where, later)
            if not (_whole(ch) and 1 <= ch <= 16):
                raise MidiMapError(f"controller map {where}: stem {name}: channel must be 1-16, got {str(ch)[:40]!r}")
            if ch - 1 in by_channel:
                raise MidiMapError(f"controller map {where}: stems {by_channel[ch - 1]} and {name} are both on "
                                   f"channel {ch}")
            by_channel[ch - 1] = name
    own_channel = [isinstance(e, dict) and "channel" in e for e in raw["controls"]]
    out: list[Binding] = []
    for entry, b, has_channel in zip(raw["controls"], bindings, own_channel, strict=True):
        if "stem" in entry:
            out.append(replace(b, target=_stem_target(b.target, _known_stem(entry["stem"], stems, where, later))))
        elif by_channel and not has_channel and _per_stem(b.target):
            out.extend(replace(b, target=_stem_target(b.target, name), channel=ch) for ch, name in by_channel.items())
        else:
            out.append(b)
    return out


def _program_scenes(pc: dict[Any, Any], where: str) -> dict[int, str]:
    scenes = {}
    for number, name in pc.items():
        if not (_whole(number) and 0 <= number <= 127):
            raise MidiMapError(f"controller map {where}: program_change numbers are 0-127, got {str(number)[:40]!r}")
        try:
            scenes[number] = check_name(str(name), "scene name")
        except ConceptError as exc:
            raise MidiMapError(f"controller map {where}: program_change {number}: {exc}") from None
    return scenes


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _channel(value: Any, where: str) -> int | None:
    if value is None or value == "any":
        return None
    if _whole(value) and 1 <= value <= 16:
        return value - 1
    raise MidiMapError(f"controller map {where}: channel must be 1-16 or 'any', got {value!r}")


def _binding(entry: Any, channel: int | None, where: str) -> Binding:
    if not isinstance(entry, dict):
        raise MidiMapError(f"controller map {where}: each control must be a mapping, got {entry!r}")
    cc, target, lsb = entry.get("cc"), entry.get("target"), entry.get("lsb")
    if not (_whole(cc) and isinstance(target, str)):
        raise MidiMapError(f"controller map {where}: each control needs a whole 'cc' and a 'target' address: "
                           f"{str(entry)[:120]}")
    if not 0 <= cc <= 127 or (lsb is not None and not (_whole(lsb) and 0 <= lsb <= 127)):
        raise MidiMapError(f"controller map {where}: CC numbers are whole numbers 0-127: {str(entry)[:120]}")
    mode = str(entry.get("mode", "absolute"))
    if mode not in MODES:
        raise MidiMapError(f"controller map {where}: unknown mode {mode[:40]!r} (choose {', '.join(MODES)})")
    step = entry.get("step", 0.01)
    if not (_finite(step) and 0 < step <= 1):
        raise MidiMapError(f"controller map {where}: step is a number in (0, 1] (of the knob's span), "
                           f"got {str(step)[:40]!r}")
    rng = entry.get("range")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2 and all(_finite(v) for v in rng)
                and math.isfinite(rng[1] - rng[0])):
            raise MidiMapError(f"controller map {where}: range must be [low, high], two finite numbers: "
                               f"{str(entry)[:120]}")
        rng = (float(rng[0]), float(rng[1]))
    shape = str(entry.get("curve", "linear"))
    curve(shape)
    takeover = str(entry.get("takeover", "pickup"))
    if takeover not in ("pickup", "jump"):
        raise MidiMapError(f"controller map {where}: takeover is 'pickup' or 'jump', got {takeover[:40]!r}")
    button = entry.get("button", False)
    if not isinstance(button, bool):
        raise MidiMapError(f"controller map {where}: button is true or false, got {str(button)[:40]!r}")
    return Binding(cc=cc, target=target, range=rng, curve=shape, mode=mode, step=float(step), lsb=lsb,
                   takeover=takeover, button=button,
                   channel=_channel(entry["channel"], where) if "channel" in entry else channel)


def map_entries(bindings: Iterable[Binding]) -> list[dict[str, Any]]:
    """Bindings as map-file entries: only what differs from the defaults, so the file reads
    like one written by hand."""
    entries = []
    for b in bindings:
        entry: dict[str, Any] = {"cc": b.cc, "target": b.target}
        if b.lsb is not None:
            entry["lsb"] = b.lsb
        if b.range is not None:
            entry["range"] = list(b.range)
        for key, default in (("curve", "linear"), ("mode", "absolute"), ("step", 0.01), ("takeover", "pickup"),
                             ("button", False)):
            if getattr(b, key) != default:
                entry[key] = getattr(b, key)
        if b.channel is not None:
            entry["channel"] = b.channel + 1
        entries.append(entry)
    return entries


def save_map(name: str, bindings: Iterable[Binding], program_change: str | dict[int, str] | None = None,
             folder: Path | None = None) -> Path:
    """Write a map that ``load_map(name)`` (and ``serve --midi-map name``) reads back.

    Written atomically, so a crash never leaves half a map."""
    try:
        check_name(name, "controller map name")
    except ConceptError as exc:
        raise MidiMapError(str(exc)) from None
    folder = folder or user_maps_dir()
    raw: dict[str, Any] = {"name": name, "controls": map_entries(bindings)}
    if program_change is not None:
        raw["program_change"] = program_change
    path = folder / f"{name}.yaml"
    header = "# Saved by steerbridge (/midi/save), MIDI learn included. Edit freely.\n"
    try:
        write_atomically(path, header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    except OSError as exc:
        raise MidiMapError(f"cannot save controller map {name!r} in {folder}: {exc}") from None
    return path
