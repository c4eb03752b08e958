"""Scenes: named snapshots of every target the control table marks ``scene``: each
knob's alpha, the on/off switches, the prompt and the sampling settings.

A scene is a small JSON file ``<name>.json`` in the scene folder (by default
``~/.local/share/steerbridge/scenes``): ``{"targets": {concept: alpha}, "enabled":
{concept: bool}, "prompt": str, "settings": {name: number}}``, each part optional.
Names are names, never paths. Scenes shipped in ``presets/scenes`` can be recalled
too; a saved scene of the same name wins.

The store is bounded, because ``/scene/save`` is open to anyone who can send OSC: at
most ``MAX_SCENES`` saved scenes and ``MAX_SCENES_BYTES`` in all (overwriting a scene is
always allowed). A recall of a name that is not there costs what a hit costs: the
names are read from the folders once, kept sorted in memory and updated on each save,
and the error offers at most ``SUGGESTIONS`` neighbours, never the whole list.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
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
MAX_SCENES = 1000  # saved scenes (the shipped ones do not count)
MAX_SCENES_BYTES = 16 * 1024 * 1024  # the saved scenes' files together
SUGGESTIONS = 3  # names a miss offers ("did you mean")


class SceneError(UserError):
    """An invalid scene name, a scene that does not exist, or an unreadable scene file."""


def default_scene_dir() -> Path:
    return data_dir("scenes")


class SceneStore:
    """Thread-safe: the OSC thread saves and recalls, MIDI's thread recalls."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_scene_dir()
        self._lock = threading.Lock()
        self._known: list[str] | None = None  # saved and shipped names, sorted: read once, then kept
        self._sizes: dict[str, int] = {}  # saved scene -> its file's size

    def names(self) -> list[str]:
        found = {p.stem for d in (SHIPPED_SCENES, self.folder) if d.is_dir() for p in d.glob("*.json")}
        return sorted(found)

    def save(self, name: str, view: Mapping[str, Any]) -> Path:
        name = _name(name)
        path = self.folder / f"{name}.json"
        text = json.dumps({"name": name, **view}, indent=2)
        size = len(text.encode("utf-8"))
        with self._lock:
            known = self._index()
            if name not in self._sizes and len(self._sizes) >= MAX_SCENES:
                raise SceneError(f"the scene folder already holds {len(self._sizes)} scenes (limit {MAX_SCENES}); "
                                 "overwrite one, or delete some from " + _short_path(self.folder))
            total = sum(self._sizes.values()) - self._sizes.get(name, 0) + size
            if total > MAX_SCENES_BYTES:
                raise SceneError(f"the saved scenes would take {total // 1024} KiB (limit "
                                 f"{MAX_SCENES_BYTES // (1024 * 1024)} MiB); delete some from " + _short_path(self.folder))
            write_atomically(path, text)
            self._sizes[name] = size
            at = bisect.bisect_left(known, name)
            if at == len(known) or known[at] != name:
                known.insert(at, name)
        return path

    def load(self, name: str) -> dict[str, Any]:
        name = _name(name)
        for folder in (self.folder, SHIPPED_SCENES):
            path = folder / f"{name}.json"
            if path.is_file():
                return _read(path)
        with self._lock:
            near = self._neighbours(name)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else " (none saved yet)"
        raise SceneError(f"no scene named {name!r}{hint}")

    def _index(self) -> list[str]:
        """The sorted names, read from the folders the first time (under the lock)."""
        if self._known is None:
            self._sizes = {p.stem: p.stat().st_size for p in self.folder.glob("*.json") if p.is_file()} \
                if self.folder.is_dir() else {}
            shipped = {p.stem for p in SHIPPED_SCENES.glob("*.json")} if SHIPPED_SCENES.is_dir() else set()
            self._known = sorted(shipped | set(self._sizes))
        return self._known

    def _neighbours(self, name: str) -> list[str]:
        """A few names next to ``name`` in sorted order (those sharing its longest prefix)."""
        known = self._index()
        at = bisect.bisect_left(known, name)
        return known[max(0, at - SUGGESTIONS // 2):max(0, at - SUGGESTIONS // 2) + SUGGESTIONS]


def _short_path(folder: Path) -> str:
    text = str(folder)
    return text if len(text) <= 120 else "..." + text[-117:]


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
