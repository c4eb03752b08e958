"""The activation cache: one shard per audio file, what an engine hands back.

A shard is ``<key>.npy``, the pooled activations [windows, num_layers, d_model] of one
file, where the key is the SHA-256 of what they depend on (the model's fingerprint, site,
window, prompt and pooling; ``WindowPlan`` in ``audio_windows.py``) followed by the file's
bytes. Both engines write the same shards, so either one's run makes the other's cheap,
and a run stopped half-way resumes from the shards it finished: a shard is written under
a temporary name and renamed, so one that exists is whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SHARD_SUFFIX = ".npy"


@dataclass(frozen=True)
class SkippedFile:
    """A file that gave no windows, and why (unreadable, too short, wrong channel count)."""

    path: str
    reason: str


@dataclass
class EngineRun:
    """What an engine did with a list of files: the shard key of every usable one (its
    activations are in the cache under it), the files it skipped, and how many shards it
    found finished and how many it computed."""

    keys: dict[Path, str] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    from_cache: int = 0
    computed: int = 0


class ShardCache:
    """A folder of shards, written atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SHARD_SUFFIX}"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def finished_keys(self) -> set[str]:
        """Keys of every whole shard (temporary files of an interrupted write are not)."""
        return {p.name[: -len(SHARD_SUFFIX)] for p in self.folder.glob(f"*{SHARD_SUFFIX}")
                if "." not in p.name[: -len(SHARD_SUFFIX)]}

    def load(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.path(key), allow_pickle=False))

    def save(self, key: str, activations: torch.Tensor) -> None:
        target = self.path(key)
        tmp = target.with_name(f"{key}.{os.getpid()}.tmp{SHARD_SUFFIX}")
        np.save(tmp, activations.numpy(), allow_pickle=False)
        tmp.replace(target)
