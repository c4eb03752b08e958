"""Effect chains: a pedalboard ``Pedalboard`` built from a preset, with a limiter last.

A chain preset (``presets/chains/<name>.yaml``) lists effects in order. Each entry
is either a built-in pedalboard effect by class name with its parameters::

    - effect: Reverb
      room_size: 0.3
      wet_level: 0.15

or a VST3/AU plugin by path, loaded with ``pedalboard.load_plugin``::

    - plugin: /usr/lib/vst3/MyDelay.vst3
      parameters: {mix: 0.4}

Whatever the preset says, the chain ends with a ``Limiter``: random knob traffic at
2 a.m. must never reach the PA as a full-scale spike. The limiter alone is not a true
ceiling (it reacts after a transient starts), so the audio path also clips at its
threshold (``ceiling``): no sample ever leaves above it.

Every built-in effect's parameters are checked against their physical ranges before
pedalboard sees them (``PARAMETER_RANGES``): a low-pass at -5 Hz or a reverb mix of 40
is refused with one line, not played.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pedalboard

from steering_core.errors import UserError
from steering_core.paths import PRESETS_DIR

from .presetfiles import read_preset

CHAINS_DIR = PRESETS_DIR / "chains"
#: Built-in effects a preset may name (plugins load by path instead).
EFFECTS: dict[str, type[pedalboard.Plugin]] = {
    name: getattr(pedalboard, name) for name in (
        "Bitcrush", "Chorus", "Clipping", "Compressor", "Delay", "Distortion", "Gain", "HighShelfFilter",
        "HighpassFilter", "LadderFilter", "Limiter", "LowShelfFilter", "LowpassFilter", "NoiseGate",
        "PeakFilter", "Phaser", "Reverb")
}


#: Physical range of each built-in parameter, by name; pedalboard itself accepts almost anything.
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    "cutoff_frequency_hz": (1.0, 24000.0), "centre_frequency_hz": (1.0, 24000.0), "cutoff_hz": (1.0, 24000.0),
    "rate_hz": (0.001, 100.0), "q": (0.01, 100.0), "resonance": (0.0, 1.0), "drive": (1.0, 100.0),
    "gain_db": (-60.0, 24.0), "drive_db": (0.0, 60.0), "threshold_db": (-100.0, 0.0), "ratio": (1.0, 100.0),
    "attack_ms": (0.0, 1000.0), "release_ms": (0.0, 5000.0), "delay_seconds": (0.0, 5.0),
    "centre_delay_ms": (0.0, 100.0), "feedback": (-1.0, 1.0), "mix": (0.0, 1.0), "depth": (0.0, 1.0),
    "room_size": (0.0, 1.0), "damping": (0.0, 1.0), "wet_level": (0.0, 1.0), "dry_level": (0.0, 1.0),
    "width": (0.0, 1.0), "freeze_mode": (0.0, 1.0), "bit_depth": (1.0, 32.0),
}
DEFAULT_CEILING_DB = -1.0


class ChainError(UserError):
    """An effect chain preset that cannot be built."""


def ceiling(board: pedalboard.Pedalboard) -> float:
    """The linear peak no output sample may exceed: the final limiter's threshold."""
    last = board[-1] if len(board) else None
    db = float(last.threshold_db) if isinstance(last, pedalboard.Limiter) else DEFAULT_CEILING_DB
    return float(10.0 ** (min(db, 0.0) / 20.0))


def enforce_ceiling(block: np.ndarray, peak: float) -> np.ndarray:
    """Clip ``block`` in place to +-``peak`` (NaN, which a filter can blow up into, becomes silence)."""
    np.nan_to_num(block, copy=False, nan=0.0, posinf=peak, neginf=-peak)
    return np.clip(block, -peak, peak, out=block)


def _check_parameters(name: str, params: dict[str, Any], where: str) -> None:
    for key, value in params.items():
        bounds = PARAMETER_RANGES.get(key)
        if bounds is None or (key == "mode" and isinstance(value, str)):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ChainError(f"chain {where}: {name}.{key} must be a finite number, got {str(value)[:40]!r}")
        lo, hi = bounds
        if not lo <= value <= hi:
            raise ChainError(f"chain {where}: {name}.{key} = {value:g} is outside its range {lo:g}..{hi:g}")


def available_chains() -> list[str]:
    return sorted(p.stem for p in CHAINS_DIR.glob("*.yaml"))


def load_chain(spec: str) -> pedalboard.Pedalboard:
    """A chain preset by name or a .yaml file -> a Pedalboard ending in a Limiter."""
    path, raw = read_preset(spec, CHAINS_DIR, "chain preset", ChainError)
    entries = raw.get("effects", []) if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ChainError(f"chain {path.name}: expected a mapping with an 'effects' list")
    board = pedalboard.Pedalboard([_effect(entry, path.name) for entry in entries])
    if not (len(board) and isinstance(board[-1], pedalboard.Limiter)):
        board.append(pedalboard.Limiter(threshold_db=-1.0, release_ms=100.0))
    return board


def _effect(entry: Any, where: str) -> pedalboard.Plugin:
    if not isinstance(entry, dict):
        raise ChainError(f"chain {where}: each effect must be a mapping, got {type(entry).__name__}")
    entry = dict(entry)
    if "plugin" in entry:
        params = entry.get("parameters", {}) or {}
        try:
            return pedalboard.load_plugin(str(entry["plugin"]), parameter_values=params)
        except (ImportError, ValueError, RuntimeError, OSError) as exc:
            raise ChainError(f"chain {where}: cannot load plugin {entry['plugin']}: {exc}") from None
    name = entry.pop("effect", None)
    cls = EFFECTS.get(str(name))
    if cls is None:
        raise ChainError(f"chain {where}: unknown effect {str(name)[:40]!r} (built-ins: {', '.join(EFFECTS)})")
    _check_parameters(str(name), entry, where)
    try:
        return cls(**entry)
    except (TypeError, ValueError) as exc:
        raise ChainError(f"chain {where}: {name}: {exc}") from None
