"""Reading a YAML preset named by the user: a preset name (never a path) or a .yaml file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from steering_core.concepts import ConceptError, check_name


def read_preset(spec: str, folder: Path, what: str, error: type[ValueError]) -> tuple[Path, Any]:
    """``spec`` is a name in ``folder`` (``<name>.yaml``) or a path to a .yaml file.
    Returns (path, parsed YAML); every problem is one ``error`` naming ``what``."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        try:
            check_name(spec, f"{what} name")
        except ConceptError as exc:
            raise error(str(exc)) from None
        path = folder / f"{spec}.yaml"
        if not path.is_file():
            available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise error(f"no {what} {spec!r} (available: {available})")
    try:
        return path, yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
