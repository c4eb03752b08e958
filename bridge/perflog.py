"""The performance log: everything needed to play a set again, bit for bit.

JSON lines. The first line is the header (model, seed, prompt, sampling, smoothing,
vector files with their hashes); then one line per applied control event with the
step it took effect at; a clean stop adds an ``end`` line with the number of frames
played and a hash of their tokens, which ``render --automation`` checks its replay
against. Each line is flushed as it is written, so a set cut short still replays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_core.performance import Change

from .control import ControlEvent

log = logging.getLogger("steerbridge.perflog")

LOG_FORMAT = 1
MAX_LOG_BYTES = 512 * 1024 * 1024


class PerformanceLogError(ValueError):
    """A file that is not a readable performance log."""


class PerformanceLog:
    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", buffering=1)  # line-buffered: every line reaches the disk
        self._write({"type": "header", "format": LOG_FORMAT, **header})
        self.closed = False

    def event(self, event: ControlEvent, t: float) -> None:
        record: dict[str, Any] = {"type": "event", "t": round(t, 4), "source": event.source, "label": event.label}
        if event.step is not None:
            record["step"] = event.step
        if event.changes:
            record["changes"] = [c.to_json() for c in event.changes]
        if event.transport:
            record["transport"] = event.transport
        self._write(record)

    def end(self, frames: int, codes_sha256: str) -> None:
        if not self.closed:
            self._write({"type": "end", "frames": frames, "codes_sha256": codes_sha256})
            self._file.close()
            self.closed = True

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
        except (OSError, ValueError) as exc:
            log.error("performance log %s: %s", self.path, exc)


@dataclass
class Performed:
    header: dict[str, Any]
    schedule: list[tuple[int, Sequence[Change]]] = field(default_factory=list)
    frames: int | None = None
    codes_sha256: str | None = None


def read_log(path: str | Path) -> Performed:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            raise PerformanceLogError(f"{path} is too large to be a performance log")
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PerformanceLogError(f"cannot read performance log {path}: {exc}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a set killed mid-line: keep what is whole
                break
            raise PerformanceLogError(f"{path}:{n}: not a JSON line") from None
    if not records or records[0].get("type") != "header" or records[0].get("format") != LOG_FORMAT:
        raise PerformanceLogError(f"{path} is not a steerbridge performance log (no header line)")
    out = Performed(header=records[0])
    try:
        for record in records[1:]:
            if record.get("type") == "event" and record.get("changes"):
                out.schedule.append((int(record["step"]), [Change.from_json(c) for c in record["changes"]]))
            elif record.get("type") == "end":
                out.frames = int(record["frames"])
                out.codes_sha256 = str(record["codes_sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PerformanceLogError(f"{path}: malformed event: {exc}") from None
    return out
