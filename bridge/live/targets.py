"""The control targets: every address a message, a MIDI control or a scene can drive,
each defined once with its kind, its parser (arity, types, range), what a MIDI knob
spans on it, whether scenes store it and whether its changes are fed back.

``ControlTable.build`` makes the table of one set from its concepts and the model's
vocabulary size. The server builds it, and so does the OSC front process from
``spec()`` (the same function, so the same table): the front parses and validates
every message against it, and the server runs the parsed arguments as they come.
MIDI bindings resolve to their ``Target`` when the map loads; scenes save and recall
the targets marked ``scene``. This module imports nothing heavy (no torch): the front
runs it.

A new ``/gen/*`` setting is one row of ``SETTINGS`` and one field of ``SamplingSettings``
(both in ``steering_core/stream/settings.py``, torch-free); this table builds its target from
the row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steering_core.errors import UserError
from steering_core.stream.settings import SETTING_BY_NAME, SETTINGS, Setting

from ..clock.grid import Quantize
from .oscmatch import AddressMatcher, PatternError, describe_unknown
from .target_units import LOCK_CONCEPT, UNITS

#: A parsed argument: what a parser returns, typed as the target wants it.
Scalar = bool | int | float | str
Args = tuple[Scalar, ...]
Kind = Literal["alpha", "knob", "on", "prompt", "setting", "seed", "transport", "transport_bpm", "transport_beat", "panic",
               "scene_save", "scene_recall", "scene_morph", "midi_learn", "midi_save", "subscribe", "unsubscribe",
               "status", "target", "target_knob", "target_probe", "target_off", "sync_lock", "sync_warp", "mute", "solo",
               "stem_add", "stem_remove"]

MAX_PROMPT_CHARS = 500
MAX_NAME_CHARS = 64
MAX_HOST_CHARS = 253
MAX_SEED = 2**63 - 1


class ControlError(UserError):
    """A control message that cannot be applied; it changed nothing."""




@dataclass(frozen=True)
class Asked:
    """What the performer asked for at one moment (``ControlState.asked`` gives it)."""

    alphas: Mapping[str, float]
    enabled: Mapping[str, bool]
    prompt: str
    settings: Mapping[str, float]  # by ``SamplingSettings`` field
    #: Each stem's own view, by stem name (none on a one-stream set), with its mute and solo.
    stems: Mapping[str, Asked] = field(default_factory=dict)
    mute: bool = False
    solo: bool = False


@dataclass(frozen=True)
class Target:
    """One address and everything the control surfaces need to know about it."""

    address: str
    kind: Kind
    #: Raises ControlError; returns the arguments as the target takes them. Two tables
    #: built from one spec hold equal targets: the parsers (closures) are left out of ==.
    parse: Callable[[Sequence[Any]], Args] = field(compare=False)
    concept: str | None = None
    alpha_range: tuple[float, float] | None = None  # alpha and knob targets: the concept's range
    setting: Setting | None = None
    range: tuple[float, float] | None = None  # a numeric target's valid values, in its own units
    whole: bool = False  # a numeric target that takes whole numbers
    span: tuple[float, float] | None = None  # a MIDI knob can drive it, over this span by default
    button: bool = False  # a MIDI button can press it (a switch toggles)
    feedback: str | None = None  # the address its changes are fed back on
    scene: tuple[str, str] | None = None  # (section, key) in a scene file; None: not stored
    #: Where an optional trailing quantize argument (off|beat|bar|<n>bar) may follow the
    #: target's own arguments; None: the target takes none.
    quantize_at: int | None = None
    #: A stem's own row (``/stem/<name>/...``): the stem's name and its row in the batch.
    stem: str | None = None
    stream: int | None = None

    def quantize(self, args: Args) -> str | None:
        """The quantize a message asked for (its trailing argument), or None."""
        if self.quantize_at is None or len(args) <= self.quantize_at:
            return None
        return str(args[self.quantize_at])

    def read(self, asked: Asked) -> Scalar | None:
        """The target's asked value, in its own units (None: it holds no value)."""
        if self.stem is not None:
            asked = asked.stems[self.stem]
        if self.kind in ("mute", "solo"):
            return asked.mute if self.kind == "mute" else asked.solo
        if self.kind == "alpha" and self.concept is not None:
            return asked.alphas[self.concept]
        if self.kind == "knob" and self.concept is not None and self.alpha_range is not None:
            lo, hi = self.alpha_range
            return (asked.alphas[self.concept] - lo) / (hi - lo)
        if self.kind == "on" and self.concept is not None:
            return asked.enabled[self.concept]
        if self.kind == "prompt":
            return asked.prompt
        if self.setting is not None:
            return asked.settings[self.setting.field]
        return None

    def clamp(self, value: float) -> float | int:
        """A stored number brought into the target's range (scenes written for other ranges)."""
        lo, hi = self.range or (-math.inf, math.inf)
        value = min(max(float(value), lo), hi)
        return round(value) if self.whole else value


class ControlTable:
    """Every target of one set, by address, in a fixed order."""

    def __init__(self, concepts: Sequence[tuple[str, tuple[float, float]]], vocab_size: int,
                 probes: Sequence[str] = ()) -> None:
        self.concepts = [(name, (float(lo), float(hi))) for name, (lo, hi) in concepts]
        self.vocab_size = vocab_size
        #: The concepts whose vector carries a probe: they take a probe target.
        self.probes = [name for name, _ in self.concepts if name in set(probes)]
        self._targets: dict[str, Target] = {}
        for name, alpha_range in self.concepts:
            self._add(Target(f"/steer/{name}", "alpha", quantized(_alpha_parser(name, alpha_range), 1), name,
                             alpha_range, range=alpha_range, span=alpha_range, feedback=f"/steer/{name}",
                             scene=("targets", name), quantize_at=1))
            self._add(Target(f"/steer/{name}/knob", "knob", quantized(_knob_parser(name), 1), name, alpha_range,
                             range=(0.0, 1.0), span=(0.0, 1.0), feedback=f"/steer/{name}/knob", quantize_at=1))
            self._add(Target(f"/steer/{name}/on", "on", quantized(_switch_parser, 1), name, button=True,
                             feedback=f"/steer/{name}/on", scene=("enabled", name), quantize_at=1))
            self._add_target_rows(name)
        self._add(Target("/prompt", "prompt", quantized(_prompt_parser, 1), feedback="/prompt", scene=("prompt", ""),
                         quantize_at=1))
        for s in SETTINGS:
            valid = (float(s.valid[0]), float(vocab_size if s.valid[1] is None else s.valid[1]))
            span = (s.span[0], min(s.span[1], valid[1]))  # a full turn stays within what the model accepts
            self._add(Target(f"/gen/{s.name}", "setting", _setting_parser(s, valid), setting=s, range=valid,
                             whole=s.whole, span=span, feedback=f"/gen/{s.name}", scene=("settings", s.name)))
        self._add(Target("/gen/seed", "seed", _seed_parser, range=(0.0, float(MAX_SEED)), whole=True, span=(0.0, 1.0)))
        self._add(Target("/scene/save", "scene_save", _name_parser))
        self._add(Target("/scene/recall", "scene_recall", quantized(_name_parser, 1), quantize_at=1))
        self._add(Target("/scene/morph", "scene_morph", quantized(_morph_parser, 3), quantize_at=3))
        for state in ("play", "stop"):
            self._add(Target(f"/transport/{state}", "transport", _no_args, button=True, feedback="/transport/playing"))
        self._add(Target("/transport/bpm", "transport_bpm", _bpm_parser, range=(1.0, 999.0), span=(60.0, 180.0)))
        self._add(Target("/transport/beat", "transport_beat", _beat_parser))
        if any(name == LOCK_CONCEPT for name, _ in self.concepts):
            self._add(Target("/sync/lock", "sync_lock", _switch_parser, button=True))
            self._add(Target("/sync/lock/warp", "sync_warp", _switch_parser, button=True))
        self._add(Target("/panic", "panic", _no_args, button=True))
        self._add(Target("/midi/learn", "midi_learn", self._learn_parser))
        self._add(Target("/midi/save", "midi_save", _name_parser))
        self._add(Target("/subscribe", "subscribe", _subscription_parser))
        self._add(Target("/unsubscribe", "unsubscribe", _subscription_parser))
        self._add(Target("/status", "status", _no_args))
        self._add_more()
        self._matcher = AddressMatcher(self._targets)

    # --- the front process builds the same table ---------------------------------
    def spec(self) -> dict[str, Any]:
        """What ``from_spec`` needs to build this table again (JSON)."""
        return {"concepts": [[name, lo, hi] for name, (lo, hi) in self.concepts], "vocab_size": self.vocab_size,
                "probes": list(self.probes)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ControlTable:
        return cls([(str(name), (float(lo), float(hi))) for name, lo, hi in spec["concepts"]], int(spec["vocab_size"]),
                   [str(name) for name in spec.get("probes", [])])

    # --- lookups -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Target]:
        return iter(self._targets.values())

    def __getitem__(self, address: str) -> Target:
        return self._targets[address]

    def get(self, address: str) -> Target | None:
        return self._targets.get(address)

    @property
    def addresses(self) -> list[str]:
        return list(self._targets)

    def parse(self, address: str, args: Sequence[Any]) -> list[tuple[Target, Args]]:
        """Every target ``address`` (or its pattern) names, with the arguments parsed for each.
        All or nothing: raises ``ControlError`` if the address names nothing or any target
        refuses its arguments."""
        try:
            addresses = self._matcher.match(address)
        except PatternError as exc:
            raise ControlError(f"bad address pattern: {exc}") from None
        if not addresses:
            raise ControlError(describe_unknown(address, [name for name, _ in self.concepts]))
        return [(target, target.parse(args)) for target in map(self._targets.__getitem__, addresses)]

    def touched(self, kind: str, concept: str | None, stream: int | None = None) -> list[Target]:
        """The targets whose asked value a change of ``kind`` (a ``Change.kind``) moves; a
        change for one stem (``stream``) moves that stem's rows only."""
        rows = self._touched(kind, concept)
        return rows if stream is None else [t for t in rows if t.stream == stream]

    def _touched(self, kind: str, concept: str | None) -> list[Target]:
        if kind in ("mute", "solo"):
            return [t for t in self if t.kind == kind]
        if kind == "alpha":
            return [t for t in self if t.concept == concept and t.kind in ("alpha", "knob")]
        if kind == "enabled":
            return [t for t in self if t.concept == concept and t.kind == "on"]
        if kind == "panic":
            return [t for t in self if t.kind in ("alpha", "knob")]
        if kind == "prompt":
            return [t for t in self if t.kind == "prompt"]
        setting = SETTING_BY_NAME.get(kind)
        return [self._targets[f"/gen/{setting.name}"]] if setting is not None else []

    # --- internals -----------------------------------------------------------------
    def _add_more(self) -> None:
        """More rows, after the table's own (a stem set's, ``stem_table.StemTable``)."""

    def _add(self, target: Target) -> None:
        self._targets[target.address] = target

    def alpha_ranges(self) -> dict[str, tuple[float, float]]:
        return dict(self.concepts)

    def _add_target_rows(self, name: str) -> None:
        """A concept a sensor reads (``target_units.UNITS``) can be driven by a target; one whose
        vector carries a probe, by a probe target (a probability, read on its steered layer)."""
        unit = UNITS.get(name)
        if unit is not None:
            self._add(Target(f"/steer/{name}/target", "target", _unit_parser(name, unit.valid, unit.unit), name,
                             range=unit.valid, span=unit.knob))
            self._add(Target(f"/steer/{name}/target/knob", "target_knob", _knob_parser(name), name, range=(0.0, 1.0),
                             span=(0.0, 1.0)))
        if name in self.probes:
            self._add(Target(f"/steer/{name}/target/probe", "target_probe", _probability_parser(name), name,
                             range=(0.0, 1.0), span=(0.0, 1.0)))
        if unit is not None or name in self.probes:
            self._add(Target(f"/steer/{name}/target/off", "target_off", _no_args, name, button=True))

    def _learn_parser(self, args: Sequence[Any]) -> Args:
        address = text(args, 0, 1, 200)
        target = self._targets.get(address)
        if target is None or (target.span is None and target.kind != "on"):
            raise ControlError(f"cannot learn {address!r}: not a knob target (e.g. /steer/<concept>/knob)")
        return (address,)


def feedback_value(value: Scalar) -> Scalar:
    """A value as controllers want it fed back: switches as 0/1."""
    return int(value) if isinstance(value, bool) else value


def scene_targets(table: ControlTable) -> Iterable[Target]:
    return (t for t in table if t.scene is not None)


# --- parsers: one clear sentence per mistake ---------------------------------------------
def arity(args: Sequence[Any], n: int) -> None:
    if len(args) != n:
        raise ControlError(f"expected {n} argument{'s' if n != 1 else ''}, got {len(args)}")


def number(args: Sequence[Any], i: int, n: int) -> float:
    arity(args, n)
    value = args[i]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"argument {i + 1} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ControlError(f"argument {i + 1} must be finite, got {value}")
    return float(value)


def whole(args: Sequence[Any], i: int, n: int) -> int:
    value = number(args, i, n)
    if not value.is_integer():
        raise ControlError(f"argument {i + 1} must be a whole number, got {value:g}")
    return int(args[i]) if isinstance(args[i], int) else int(value)


def text(args: Sequence[Any], i: int, n: int, limit: int) -> str:
    arity(args, n)
    value = args[i]
    if not isinstance(value, str):
        raise ControlError(f"argument {i + 1} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ControlError(f"argument {i + 1} is {len(value)} characters; the limit is {limit}")
    return value


def _no_args(args: Sequence[Any]) -> Args:
    arity(args, 0)
    return ()


def quantized(parse: Callable[[Sequence[Any]], Args], n: int) -> Callable[[Sequence[Any]], Args]:
    """``parse`` for a target's own ``n`` arguments, then an optional quantize (a string:
    off, beat, bar or <n>bar), checked here and passed on as written."""
    def parse_quantized(args: Sequence[Any]) -> Args:
        if len(args) != n + 1 or not isinstance(args[n], str):
            return parse(args)  # its own arity error, for one argument too many that is no quantize
        spec = text(args, n, n + 1, 16)
        try:
            Quantize.parse(spec)
        except UserError as exc:
            raise ControlError(str(exc)) from None
        return (*parse(args[:n]), spec)
    return parse_quantized


def _bpm_parser(args: Sequence[Any]) -> Args:
    bpm = number(args, 0, 1)
    if not 1.0 <= bpm <= 999.0:
        raise ControlError(f"tempo {bpm:g} BPM is outside 1..999")
    return (bpm,)


def _beat_parser(args: Sequence[Any]) -> Args:
    beat = number(args, 0, 1)
    if abs(beat) > 1e7:
        raise ControlError(f"beat {beat:g} is beyond any song (beats count from the song's start)")
    return (beat,)


def _alpha_parser(name: str, alpha_range: tuple[float, float]) -> Callable[[Sequence[Any]], Args]:
    lo, hi = alpha_range

    def parse(args: Sequence[Any]) -> Args:
        alpha = number(args, 0, 1)
        if not lo <= alpha <= hi:
            raise ControlError(f"alpha {alpha:g} is outside {name}'s range {lo:g}..{hi:g}")
        return (alpha,)
    return parse


def _unit_parser(name: str, valid: tuple[float, float], unit: str) -> Callable[[Sequence[Any]], Args]:
    lo, hi = valid

    def parse(args: Sequence[Any]) -> Args:
        value = number(args, 0, 1)
        if not lo <= value <= hi:
            raise ControlError(f"{name} target {value:g} {unit} is outside {lo:g}..{hi:g}")
        return (value,)
    return parse


def _knob_parser(name: str) -> Callable[[Sequence[Any]], Args]:
    def parse(args: Sequence[Any]) -> Args:
        knob = number(args, 0, 1)
        if not 0.0 <= knob <= 1.0:
            raise ControlError(f"knob {knob:g} for {name} is outside 0..1")
        return (knob,)
    return parse


def _probability_parser(name: str) -> Callable[[Sequence[Any]], Args]:
    def parse(args: Sequence[Any]) -> Args:
        p = number(args, 0, 1)
        # 0 and 1 themselves are out of reach: the probe's sigmoid never gets there.
        if not 0.0 < p < 1.0:
            raise ControlError(f"probe target {p:g} for {name} must be a probability strictly between 0 and 1")
        return (p,)
    return parse


def _switch_parser(args: Sequence[Any]) -> Args:
    arity(args, 1)
    if isinstance(args[0], bool):
        return (args[0],)
    value = number(args, 0, 1)
    if value not in (0.0, 1.0):
        raise ControlError(f"on/off wants 0 or 1, got {value:g}")
    return (value == 1.0,)


def _prompt_parser(args: Sequence[Any]) -> Args:
    prompt = text(args, 0, 1, MAX_PROMPT_CHARS).strip()
    if not prompt:
        raise ControlError("the prompt is empty")
    return (prompt,)


def _setting_parser(setting: Setting, valid: tuple[float, float]) -> Callable[[Sequence[Any]], Args]:
    lo, hi = valid

    def parse(args: Sequence[Any]) -> Args:
        value: float | int = whole(args, 0, 1) if setting.whole else number(args, 0, 1)
        if not lo <= value <= hi:
            kind = "a whole number in" if setting.whole else "in"
            raise ControlError(f"{setting.name} must be {kind} {lo:g}..{hi:g}{setting.hint}, got {value:g}")
        return (value,)
    return parse


def _seed_parser(args: Sequence[Any]) -> Args:
    seed = whole(args, 0, 1)
    if not 0 <= seed <= MAX_SEED:
        raise ControlError(f"seed must be a whole number >= 0, got {seed!r}")
    return (seed,)


def _name_parser(args: Sequence[Any]) -> Args:
    # The naming rule itself (no paths) is the server's, where names meet the disk
    # (``Commands``, the scene store, ``save_map``): it needs no YAML in the front.
    return (text(args, 0, 1, MAX_NAME_CHARS),)


def _morph_parser(args: Sequence[Any]) -> Args:
    a, b = text(args, 0, 3, MAX_NAME_CHARS), text(args, 1, 3, MAX_NAME_CHARS)
    t = number(args, 2, 3)
    if not 0.0 <= t <= 1.0:
        raise ControlError(f"morph position {t:g} is outside 0..1")
    return (a, b, t)


def _subscription_parser(args: Sequence[Any]) -> Args:
    host = text(args, 0, 2, MAX_HOST_CHARS)
    port = whole(args, 1, 2)
    if not 1 <= port <= 65535:
        raise ControlError(f"port {port} is outside 1..65535")
    return (host, port)
