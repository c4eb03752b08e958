"""User files: reading a YAML preset named by the user (a preset name, never a path, or
a .yaml file), and where and how the user's own scenes and maps are saved."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steering_core.extract.concepts import ConceptError, check_name

from .safeyaml import YamlLimitError, load_yaml_file
from .userfiles import NotARegularFile


def write_atomically(path: Path, text: str) -> None:
    """Write-then-rename: a crash mid-save never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        return path, load_yaml_file(path)
    except (YamlLimitError, NotARegularFile) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
