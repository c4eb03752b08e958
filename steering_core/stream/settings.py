"""The sampling settings a performer can change while the music plays, each defined once:
its control name (``/gen/<name>``, the ``Change`` kind), its ``SamplingSettings`` field,
what it accepts and what a knob over it spans.

Torch-free, so the OSC front process can check a value without loading a model. A new
setting is one row of ``SETTINGS`` and one field of ``SamplingSettings`` here, plus the
sampler that uses it (``sampling.py``); the controls, scenes, MIDI and the performance log
pick it up from the row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from steering_core.errors import UserError


@dataclass(frozen=True)
class Setting:
    """A sampling setting as a control: ``/gen/<name>``, the change kind ``<name>``."""

    name: str
    field: str  # its ``SamplingSettings`` field
    whole: bool  # a whole number
    valid: tuple[float, float | None]  # what ``SamplingSettings.validate`` accepts; None: no top (top_k: the vocabulary's)
    span: tuple[float, float]  # what a MIDI knob on it spans, unless its map says otherwise
    hint: str = ""  # said after the range when a value is refused

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not a valid setting (None: it is). The top of an open range is
        checked where it is known (top_k's vocabulary: the control table)."""
        lo, hi = self.valid
        if not (isinstance(value, bool) or not isinstance(value, int | float) or (self.whole and not isinstance(value, int))):
            x = float(value)
            if math.isfinite(x) and x >= lo and (hi is None or x <= hi):
                return None
        kind = "a whole number " if self.whole else ""
        where = f">= {lo:g}" if hi is None else f"in {lo:g}..{hi:g}"
        return f"{self.name} must be {kind}{where}{self.hint}, got {value}"


SETTINGS: tuple[Setting, ...] = (
    Setting("guidance", "guidance_scale", False, (0.0, 20.0), (1.0, 8.0)),
    Setting("temperature", "temperature", False, (0.0, 5.0), (0.5, 1.5), " (0 = greedy)"),
    Setting("top_k", "top_k", True, (0, None), (1.0, 250.0)),
    Setting("top_p", "top_p", False, (0.0, 1.0), (0.0, 1.0), " (0 = off)"),
)
SETTING_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass
class SamplingSettings:
    """What the sampler reads each step (``sampling.draw``); changed between frames by
    replacing it whole, never in place."""

    guidance_scale: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0  # 0 disables nucleus sampling

    def validate(self) -> None:
        for setting in SETTINGS:
            problem = setting.problem(getattr(self, setting.field))
            if problem is not None:
                raise UserError(problem)

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0


assert [s.field for s in SETTINGS] == [f.name for f in fields(SamplingSettings)], "each setting needs its row in SETTINGS"


def settings_from_controls(values: Mapping[str, object], base: SamplingSettings | None = None) -> SamplingSettings:
    """``base`` (the defaults if None) with each setting that ``values`` names by its control
    name (``guidance``, ``top_k``, ...; a command line's options, say) put in; a None value, or
    one ``values`` lacks, keeps ``base``'s. Validated."""
    merged = asdict(base or SamplingSettings())
    for setting in SETTINGS:
        if values.get(setting.name) is not None:
            merged[setting.field] = values[setting.name]
    settings = SamplingSettings(**merged)
    settings.validate()
    return settings


def within_vocabulary(settings: SamplingSettings, vocab_size: int) -> SamplingSettings:
    """``settings`` with ``top_k`` no larger than the vocabulary. A top_k at or past the
    vocabulary limits nothing (the sampler skips it), so the tokens are the same; but the
    value a performer is shown, and may send back (``/gen/top_k`` takes 0..vocabulary), is
    then one the model accepts: the default 250 is 128 on a 128-token model."""
    return settings if settings.top_k <= vocab_size else replace(settings, top_k=vocab_size)
