"""Scenes: named snapshots of every target the control table marks ``scene``: each
knob's alpha, the on/off switches, the prompt and the sampling settings.

A scene is a small JSON file ``<name>.json`` in the scene folder (by default
``~/.local/share/steerbridge/scenes``): ``{"targets": {concept: alpha}, "enabled":
{concept: bool}, "prompt": str, "settings": {name: number}}``, each part optional.
Names are names, never paths. Scenes shipped in ``presets/scenes`` can be recalled
too; a saved scene of the same name wins.
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
from .targets import MAX_PROMPT_CHARS, Asked, ControlTable, Scalar, Target
from .userfiles import NotARegularFile, read_user_file

SHIPPED_SCENES = PRESETS_DIR / "scenes"
MAX_SCENE_BYTES = 64 * 1024


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


def scene_of(table: ControlTable, asked: Asked) -> dict[str, Any]:
    """What a scene stores of the asked state: every target marked ``scene``."""
    view: dict[str, Any] = {}
    for target in _scene_targets(table):
        value = target.read(asked)
        if value is not None:
            _store(view, target, value)
    return view


def scene_values(table: ControlTable, scene: Mapping[str, Any]) -> list[tuple[Target, Scalar]]:
    """The values a scene holds for this set's targets, numbers brought into each target's
    range; concepts it names that are not loaded, and parts it lacks, are left out."""
    out: list[tuple[Target, Scalar]] = []
    for target in _scene_targets(table):
        value = _stored(scene, target)
        if value is None or value == "":
            continue
        out.append((target, target.clamp(value) if target.range is not None else value))
    return out


def morph(table: ControlTable, a: Mapping[str, Any], b: Mapping[str, Any], t: float) -> dict[str, Any]:
    """Halfway houses between two scenes: numbers (alphas, settings) interpolate linearly
    (a missing alpha is 0, a missing setting is the other scene's); switches and the
    prompt (which cannot be blended) come from the nearer scene."""
    near = a if t < 0.5 else b
    out: dict[str, Any] = {}
    for target in _scene_targets(table):
        if target.range is None:
            value = _stored(near, target)
        else:
            va, vb = _stored(a, target), _stored(b, target)
            if target.kind == "alpha":
                va, vb = va or 0.0, vb or 0.0
            value = vb if va is None else va if vb is None else (1 - t) * float(va) + t * float(vb)
        if value is not None:
            _store(out, target, value)
    return out


def _scene_targets(table: ControlTable) -> list[Target]:
    return [t for t in table if t.scene is not None]


def _stored(scene: Mapping[str, Any], target: Target) -> Any:
    assert target.scene is not None
    section, key = target.scene
    part = scene.get(section)
    if not key:
        return part
    return part.get(key) if isinstance(part, Mapping) else None


def _store(view: dict[str, Any], target: Target, value: Any) -> None:
    assert target.scene is not None
    section, key = target.scene
    if key:
        view.setdefault(section, {})[key] = value
    else:
        view[section] = value


def _name(name: str) -> str:
    try:
        return check_name(name, "scene name")
    except ConceptError as exc:
        raise SceneError(str(exc)) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_user_file(path, MAX_SCENE_BYTES)
        if len(data) > MAX_SCENE_BYTES:
            raise SceneError(f"scene file {path.name} is too large")
        raw = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, NotARegularFile) as exc:
        raise SceneError(f"scene file {path.name} is unreadable: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("targets", {}), dict):
        raise SceneError(f"scene file {path.name} is not a scene (expected an object with 'targets')")
    for name, value in raw.get("targets", {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SceneError(f"scene file {path.name}: target {str(name)[:40]!r} is not a finite number")
    enabled = raw.get("enabled", {})
    if not isinstance(enabled, dict) or not all(isinstance(v, bool) for v in enabled.values()):
        raise SceneError(f"scene file {path.name}: 'enabled' must map concepts to true/false")
    settings = raw.get("settings", {})
    if not isinstance(settings, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in settings.values()):
        raise SceneError(f"scene file {path.name}: 'settings' must map setting names to finite numbers")
    prompt = raw.get("prompt")
    if prompt is not None and not (isinstance(prompt, str) and len(prompt) <= MAX_PROMPT_CHARS):
        raise SceneError(f"scene file {path.name}: 'prompt' must be text of at most {MAX_PROMPT_CHARS} characters")
    return raw
