"""Reading a YAML preset named by the user: a preset name (never a path) or a .yaml file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from steering_core.concepts import ConceptError, check_name


def preset_names(folders: Sequence[Path]) -> list[str]:
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


def read_preset(spec: str, folder: Path | Sequence[Path], what: str, error: type[ValueError]) -> tuple[Path, Any]:
    """``spec`` is a name (``<name>.yaml`` in ``folder``, or the first of several folders
    that has it) or a path to a .yaml file. Returns (path, parsed YAML); every problem
    is one ``error`` naming ``what``."""
    folders = [folder] if isinstance(folder, Path) else list(folder)
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        try:
            check_name(spec, f"{what} name")
        except ConceptError as exc:
            raise error(str(exc)) from None
        found = [f / f"{spec}.yaml" for f in folders if (f / f"{spec}.yaml").is_file()]
        if not found:
            raise error(f"no {what} {spec!r} (available: {', '.join(preset_names(folders))})")
        path = found[0]
    try:
        return path, yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
