"""Scenes: named snapshots of every knob target, the on/off switches and the prompt.

A scene is a small JSON file ``<name>.json`` in the scene folder (by default
``~/.local/share/steerbridge/scenes``). Names are names, never paths. Scenes shipped
in ``presets/scenes`` can be recalled too; a saved scene of the same name wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steering_core.errors import UserError
from steering_core.extract.concepts import ConceptError, check_name
from steering_core.paths import PRESETS_DIR, data_dir

from .presetfiles import write_atomically

SHIPPED_SCENES = PRESETS_DIR / "scenes"
MAX_SCENE_BYTES = 64 * 1024
MAX_SCENE_PROMPT_CHARS = 500  # as /prompt


class SceneError(UserError):
    """An invalid scene name, a scene that does not exist, or an unreadable scene file."""


def default_scene_dir() -> Path:
    return data_dir("scenes")


class SceneStore:
    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_scene_dir()

    def names(self) -> list[str]:
        found = {p.stem for d in (SHIPPED_SCENES, self.folder) if d.is_dir() for p in d.glob("*.json")}
        return sorted(found)

    def save(self, name: str, view: Mapping[str, Any]) -> Path:
        path = self.folder / f"{_name(name)}.json"
        write_atomically(path, json.dumps({"name": name, **view}, indent=2))
        return path

    def load(self, name: str) -> dict[str, Any]:
        name = _name(name)
        for folder in (self.folder, SHIPPED_SCENES):
            path = folder / f"{name}.json"
            if path.is_file():
                return _read(path)
        known = ", ".join(self.names()) or "none saved yet"
        raise SceneError(f"no scene named {name!r} (scenes: {known})")


def morph(a: Mapping[str, Any], b: Mapping[str, Any], t: float) -> dict[str, Any]:
    """Halfway houses between two scenes: knob targets interpolate linearly; switches
    and the prompt (which cannot be blended) come from the nearer scene."""
    ta, tb = dict(a.get("targets", {})), dict(b.get("targets", {}))
    targets = {n: (1 - t) * float(ta.get(n, 0.0)) + t * float(tb.get(n, 0.0)) for n in ta.keys() | tb.keys()}
    near = a if t < 0.5 else b
    return {"targets": targets, "enabled": dict(near.get("enabled", {})), "prompt": near.get("prompt")}


def _name(name: str) -> str:
    try:
        return check_name(name, "scene name")
    except ConceptError as exc:
        raise SceneError(str(exc)) from None


def _read(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_SCENE_BYTES:
        raise SceneError(f"scene file {path.name} is too large")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SceneError(f"scene file {path.name} is unreadable: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("targets", {}), dict):
        raise SceneError(f"scene file {path.name} is not a scene (expected an object with 'targets')")
    for name, value in raw.get("targets", {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SceneError(f"scene file {path.name}: target {str(name)[:40]!r} is not a finite number")
    enabled = raw.get("enabled", {})
    if not isinstance(enabled, dict) or not all(isinstance(v, bool) for v in enabled.values()):
        raise SceneError(f"scene file {path.name}: 'enabled' must map concepts to true/false")
    prompt = raw.get("prompt")
    if prompt is not None and not (isinstance(prompt, str) and len(prompt) <= MAX_SCENE_PROMPT_CHARS):
        raise SceneError(f"scene file {path.name}: 'prompt' must be text of at most {MAX_SCENE_PROMPT_CHARS} characters")
    return raw
