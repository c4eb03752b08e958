"""Where steerbridge's files live: the shipped presets, and the per-user cache and data
folders (``$XDG_CACHE_HOME`` and ``$XDG_DATA_HOME`` honoured, as the XDG spec asks).

Every folder the project reads or writes outside the working directory is worked out
here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

#: The shipped presets (concepts, MIDI maps, chains, scenes), beside the packages.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def cache_dir(kind: str = "") -> Path:
    """``~/.cache/steerbridge[/kind]``: things that can be made again (vectors extracted for
    a model, activations of labelled audio, toy training checkpoints)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steerbridge"
    return base / kind if kind else base


def data_dir(kind: str) -> Path:
    """``~/.local/share/steerbridge/<kind>``: what a user made and keeps (saved scenes, maps)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "steerbridge" / kind
