"""Labelled audio files to windows, and the shard key of a file: torch-free, so the Ray
tasks that read and cut files start without importing the model's libraries.

``file_windows`` is how every engine reads a file: its bytes through pedalboard.io, mixed
to mono, resampled to the model's rate and cut into windows. ``BadAudio`` says why a file
gives none (unreadable, shorter than a second, neither mono nor stereo).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pedalboard.io import AudioFile

from steering_core.errors import UserError

MIN_WINDOW_S = 1.0


class BadAudio(UserError):
    """One of the user's files that gives no windows (unreadable, too short, too many
    channels); the message is the reason, for the report. The run skips it."""


@dataclass(frozen=True)
class WindowPlan:
    """Everything a window's pooled activations depend on besides its audio; it names the
    shard of a file (``shard_key``) and travels to every engine's workers."""

    model_fingerprint: str  # config and weights: the shape says which vectors fit, the weights what they compute
    sample_rate: int
    site: str
    window_s: float
    prompt: str | None
    pool: str

    def shard_key(self, data: bytes) -> str:
        setting = f"{self.model_fingerprint}|{self.site}|{self.window_s}|{self.prompt or ''}|{self.pool}".encode()
        return hashlib.sha256(setting + data).hexdigest()


def decode_mono(data: bytes, sample_rate: int) -> np.ndarray:
    """A file's bytes -> mono audio at ``sample_rate``. Both engines read files this way,
    so they see the same samples. Unreadable bytes, or a channel count other than 1 or 2,
    raise ``BadAudio``."""
    try:
        with AudioFile(io.BytesIO(data)).resampled_to(float(sample_rate)) as f:
            channels = int(f.num_channels)
            audio = f.read(f.frames)
    except (OSError, ValueError, RuntimeError) as exc:  # the in-memory file's repr says nothing, and differs per run
        raise BadAudio(f"unreadable ({re.sub(r'file-like object: <[^>]*>', 'file:', str(exc))})") from None
    if channels not in (1, 2):
        raise BadAudio(f"{channels} channels (want mono or stereo)")
    return audio.mean(axis=0).astype(np.float32)


def windows(audio: np.ndarray, sample_rate: int, seconds: float) -> list[np.ndarray]:
    """Consecutive windows; a short tail is kept if it is at least a second long."""
    size = int(seconds * sample_rate)
    out = [audio[i:i + size] for i in range(0, len(audio), size)]
    return [w for w in out if len(w) >= MIN_WINDOW_S * sample_rate]


def file_windows(data: bytes, sample_rate: int, seconds: float) -> list[np.ndarray]:
    """A file's bytes -> its windows; ``BadAudio`` if it has none."""
    parts = windows(decode_mono(data, sample_rate), sample_rate, seconds)
    if not parts:
        raise BadAudio(f"shorter than {MIN_WINDOW_S:g} s")
    return parts


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadAudio(f"unreadable ({exc.strerror or exc})") from None


def ray_rows(item: dict[str, Any], *, plan: WindowPlan) -> list[dict[str, Any]]:
    """The Ray engine's read-and-cut task (``ray_engine.py``): one file (its path and the
    shard key the driver found) -> a row per window, or one row saying why it is bad.
    Every row has every column, so the rows form one table."""
    path, key = item["path"], item["key"]
    try:
        data = read_file(Path(path))
        if plan.shard_key(data) != key:
            raise BadAudio("changed during the run")
        parts = file_windows(data, plan.sample_rate, plan.window_s)
    except BadAudio as exc:
        return [_row(path, key, "bad", reason=str(exc))]
    return [_row(path, key, "window", index=i, count=len(parts), audio=w) for i, w in enumerate(parts)]


def _row(path: str, key: str, kind: str, *, reason: str = "", index: int = 0, count: int = 0,
         audio: np.ndarray | None = None) -> dict[str, Any]:
    return {"path": path, "key": key, "kind": kind, "reason": reason, "index": index, "count": count,
            "audio": np.zeros(0, np.float32) if audio is None else audio}
