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
2 a.m. must never reach the PA as a full-scale spike.
"""

from __future__ import annotations

from typing import Any

import pedalboard

from steering_core.concepts import PRESETS_DIR

from .presetfiles import read_preset

CHAINS_DIR = PRESETS_DIR / "chains"
#: Built-in effects a preset may name (plugins load by path instead).
EFFECTS: dict[str, type[pedalboard.Plugin]] = {
    name: getattr(pedalboard, name) for name in (
        "Bitcrush", "Chorus", "Clipping", "Compressor", "Delay", "Distortion", "Gain", "HighShelfFilter",
        "HighpassFilter", "LadderFilter", "Limiter", "LowShelfFilter", "LowpassFilter", "NoiseGate",
        "PeakFilter", "Phaser", "Reverb")
}


class ChainError(ValueError):
    """An effect chain preset that cannot be built."""


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
        raise ChainError(f"chain {where}: each effect must be a mapping, got {entry!r}")
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
        raise ChainError(f"chain {where}: unknown effect {name!r} (built-ins: {', '.join(EFFECTS)})")
    try:
        return cls(**entry)
    except (TypeError, ValueError) as exc:
        raise ChainError(f"chain {where}: {name}: {exc}") from None
