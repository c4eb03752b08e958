"""The performance log: everything needed to play a set again, bit for bit.

JSON lines. The first line is the header (model, seed, prompt, sampling, smoothing,
vector files with their hashes); then one line per applied control event with the
step it took effect at (and, with a musical clock, the frame, ring sample, bar and
beat where it landed, and the quantize it asked); a clean stop adds an ``end`` line with the number of frames
played and a hash of their tokens, which ``render --automation`` checks its replay
against. Each line is flushed as it is written, so a set cut short still replays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from steering_core.errors import UserError
from steering_core.steer.vectors import MAX_ABS_ALPHA
from steering_core.stream.settings import SETTINGS
from steering_core.stream.timeline import Change

from .control import ControlEvent
from .recorder import write_all
from .setfile import MAX_STEMS, NAME_RE, SPARE_RE
from .targets import MAX_PROMPT_CHARS, MAX_SEED, SETTING_BY_NAME
from .userfiles import NotARegularFile, read_user_file

log = logging.getLogger("steerbridge.performance_log")

LOG_FORMAT = 1
MAX_LOG_BYTES = 512 * 1024 * 1024
#: A hub id or a folder's path: longer is not a model name but a mistake.
MAX_MODEL_CHARS = 4096


class PerformanceLogError(UserError):
    """A file that is not a readable performance log."""


class PerformanceLog:
    """Written by one thread: the header where it is made, then events and the end by the
    thread that writes the first of them (the engine's, in ``serve``); a write from any
    other thread raises ``RuntimeError``.

    Each line goes to the disk whole, or not at all: a disk that fails (full, gone) stops
    the log for good after its last whole line, said in one line, and the set plays on.
    The file is then the set's exact beginning, which replays as it was played; writing
    on past a hole would make a log that replays another set."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb", buffering=0)  # no buffer: a line reaches the disk, or fails, at once
        self._whole_bytes = 0  # the file's length up to its last whole line
        self.lines = 0
        self.failure: str | None = None
        self.unwritten = 0  # lines not written since the failure
        self.closed = False
        self._writer: int | None = None
        #: A set of stems: each change for one stem names it (its row is the header's ``stems`` order).
        self.stem_names = [str(s["name"]) for s in header.get("stems", [])]
        self._write({"type": "header", "format": LOG_FORMAT, **header})

    def event(self, event: ControlEvent, t: float) -> None:
        self._check_writer("event")
        record: dict[str, Any] = {"type": "event", "t": round(t, 4), "source": event.source, "label": event.label}
        if event.step is not None:
            record["step"] = event.step
        if event.changes:
            record["changes"] = [self._change(c) for c in event.changes]
        if event.transport:
            record["transport"] = event.transport
        if event.quantize:
            record["quantize"] = event.quantize
        if event.target is not None:  # a target knob's setpoint, off, or the lock (no change of its own)
            asks = [{k: v for k, v in vars(ask).items() if v is not None} for ask in event.target]
            record["target"] = asks[0] if len(asks) == 1 else asks
        if event.info is not None:  # the target loop's state when it set this alpha
            record["loop"] = event.info
        if event.landed:  # where it landed on the clock's grid: frame, ring sample, bar, beat
            record.update(event.landed)
        self._write(record)

    def _change(self, change: Change) -> dict[str, Any]:
        out = change.to_json()
        if change.stream is not None and change.stream < len(self.stem_names):
            out["stem"] = self.stem_names[change.stream]
        return out

    def end(self, frames: int, codes_sha256: str, rows_sha256: list[str] | None = None) -> None:
        """The last line: the frames played and a hash of their tokens (and of each stem's row)."""
        self._check_writer("end")
        if not self.closed:
            record: dict[str, Any] = {"type": "end", "frames": frames, "codes_sha256": codes_sha256}
            if rows_sha256 is not None and self.stem_names:
                record["stems_sha256"] = dict(zip(self.stem_names, rows_sha256, strict=False))
                record["rows_sha256"] = list(rows_sha256)  # by row: a row may have held stems that came and went
                record["stem_rows"] = list(self.stem_names)  # the last stem each row held (spare<row>: none)
            self._write(record)
            self._file.close()
            self.closed = True

    def _check_writer(self, call: str) -> None:
        me = threading.get_ident()
        if self._writer is None:
            self._writer = me
        elif self._writer != me:
            raise RuntimeError(f"PerformanceLog.{call} from thread {threading.current_thread().name!r}: the log "
                               "is written by one thread (the engine's)")

    def _write(self, record: dict[str, Any]) -> None:
        if self.failure is not None or self.closed:
            self.unwritten += 1
            return
        line = (json.dumps(record) + "\n").encode()
        try:
            write_all(self._file, line)
        except OSError as exc:
            self.failure = exc.strerror or str(exc)
            self.unwritten += 1
            # What the failed write left of its line goes; if the disk is gone the part line
            # stays, and read_log drops a last part line.
            with contextlib.suppress(OSError):
                self._file.truncate(self._whole_bytes)
            log.error("performance log %s stopped after %d lines: %s; it replays the set up to there "
                      "(render --automation with --seconds), and the set plays on", self.path, self.lines, self.failure)
            return
        self._whole_bytes += len(line)
        self.lines += 1

    def summary(self) -> str:
        """What the file holds, for the last log line of a set."""
        if self.failure is None:
            return f"{self.path} (replay with: steerbridge render --automation {self.path} --out replay.wav)"
        return (f"{self.path} stopped early ({self.failure}) after {self.lines} lines; {self.unwritten} were not "
                f"written (replay what it holds with: steerbridge render --automation {self.path} --seconds S "
                "--out replay.wav)")


@dataclass
class Performed:
    header: dict[str, Any]
    schedule: list[tuple[int, Sequence[Change]]] = field(default_factory=list)
    frames: int | None = None
    codes_sha256: str | None = None
    stems_sha256: dict[str, str] = field(default_factory=dict)
    rows_sha256: list[str] = field(default_factory=list)
    stem_rows: list[str] = field(default_factory=list)  # the last stem each row held


def read_log(path: str | Path) -> Performed:
    path = Path(path)
    try:
        data = read_user_file(path, MAX_LOG_BYTES)
        if len(data) > MAX_LOG_BYTES:
            raise PerformanceLogError(f"{path} is too large to be a performance log")
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError, NotARegularFile) as exc:
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
    if not records or not isinstance(records[0], dict) or records[0].get("type") != "header" \
            or records[0].get("format") != LOG_FORMAT:
        raise PerformanceLogError(f"{path} is not a steerbridge performance log (no header line)")
    out = Performed(header=records[0])
    _check_header(records[0], path)
    last_step = 0
    for n, record in enumerate(records[1:], 2):
        try:
            if not isinstance(record, dict):
                raise PerformanceLogError("a line is not a JSON object")
            if record.get("type") == "event" and record.get("changes"):
                step, changes = record.get("step"), record["changes"]
                if not (_whole(step) and step >= last_step):
                    raise PerformanceLogError(f"step {str(step)[:20]!r} is not a whole number >= the previous step")
                if not isinstance(changes, list):
                    raise PerformanceLogError("'changes' is not a list")
                batch = [Change.from_json(c) if isinstance(c, dict) else _bad(c) for c in changes]
                for change in batch:
                    _check_change(change)
                    _check_row(change, len(out.header.get("stems", [])))
                out.schedule.append((step, batch))
                last_step = step
            elif record.get("type") == "end":
                frames, sha = record.get("frames"), record.get("codes_sha256")
                if not (_whole(frames) and frames >= 0 and isinstance(sha, str)):
                    raise PerformanceLogError("the end line needs whole 'frames' and a 'codes_sha256' string")
                out.frames, out.codes_sha256 = frames, sha
                rows = record.get("stems_sha256", {})
                if not (isinstance(rows, dict) and all(isinstance(v, str) for v in rows.values())):
                    raise PerformanceLogError("the end line's 'stems_sha256' must map stem names to hashes")
                out.stems_sha256 = {str(k): v for k, v in rows.items()}
                by_row = record.get("rows_sha256", [])
                if not (isinstance(by_row, list) and all(isinstance(v, str) for v in by_row)):
                    raise PerformanceLogError("the end line's 'rows_sha256' must be a list of hashes")
                out.rows_sha256 = [str(v) for v in by_row]
                names = record.get("stem_rows", [])
                if not (isinstance(names, list) and all(isinstance(v, str) and NAME_RE.fullmatch(v) for v in names)):
                    raise PerformanceLogError("the end line's 'stem_rows' must be a list of stem names")
                out.stem_rows = [str(v) for v in names]
        except UserError as exc:
            raise PerformanceLogError(f"{path}: record {n}: malformed: {str(exc)[:200]}") from None
    return out


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bad(change: object) -> Change:
    raise PerformanceLogError(f"a change is not a JSON object: {str(change)[:40]!r}")


def _check_change(change: Change) -> None:
    """What a replay would otherwise find out, with a traceback, minutes into rendering.
    The bounds are the live server's: a log it wrote always passes."""
    if change.kind == "alpha" and not (_number(change.value) and abs(change.value) <= MAX_ABS_ALPHA
                                       and change.concept):
        raise PerformanceLogError(f"alpha change needs a concept and a number within +-{MAX_ABS_ALPHA:g}, "
                                  f"got {str(change.value)[:20]!r}")
    if change.kind == "enabled" and not (isinstance(change.value, bool) and change.concept):
        raise PerformanceLogError("enabled change needs a concept and true or false")
    if change.kind == "seed" and not _seed(change.value):
        raise PerformanceLogError(f"seed must be a whole number in 0..{MAX_SEED}")
    setting = SETTING_BY_NAME.get(change.kind)
    if setting is not None:
        problem = setting.problem(change.value)
        if problem is not None:
            raise PerformanceLogError(problem[:200])
    if change.kind == "prompt":
        _check_prompt(change.value, "prompt")


def _check_row(change: Change, stems: int) -> None:
    """A change for one stem names a row the header's ``stems`` has; a mute or solo names one."""
    if change.stream is not None and change.stream >= stems:
        raise PerformanceLogError(f"a change for stem row {change.stream}, but the set has {stems} stems")
    if change.kind in ("mute", "solo") and change.stream is None:
        raise PerformanceLogError(f"a {change.kind} change names no stem")


def _seed(value: object) -> bool:
    return _whole(value) and 0 <= value <= MAX_SEED


def _check_prompt(value: object, what: str) -> None:
    if not (isinstance(value, str) and value.strip() and len(value) <= MAX_PROMPT_CHARS):
        raise PerformanceLogError(f"{what} must be non-empty text of at most {MAX_PROMPT_CHARS} characters")


SETTING_BY_FIELD = {s.field: s for s in SETTINGS}


def _settings_problem(settings: object) -> str | None:
    """The header's ``settings``: ``SamplingSettings`` fields, each valid."""
    if not isinstance(settings, dict):
        return "'settings' must map setting names to numbers"
    for key, value in settings.items():
        setting = SETTING_BY_FIELD.get(key)
        if setting is None:
            return f"unknown setting {str(key)[:40]!r} in 'settings' (known: {', '.join(SETTING_BY_FIELD)})"
        problem = setting.problem(value)
        if problem is not None:
            return f"'settings': {problem[:120]}"
    return None


def _check_header(h: dict[str, Any], path: Path) -> None:
    """The header's fields, typed as ``render --automation`` uses them."""
    problems = []
    if not isinstance(h.get("model", ""), str) or len(h.get("model", "")) > MAX_MODEL_CHARS:
        problems.append(f"'model' must be a string of at most {MAX_MODEL_CHARS} characters")
    if "prompt" in h:
        try:
            _check_prompt(h["prompt"], "'prompt'")
        except PerformanceLogError as exc:
            problems.append(str(exc))
    if not _seed(h.get("seed", 0)):
        problems.append(f"'seed' must be a whole number in 0..{MAX_SEED}")
    if not (_number(h.get("smoothing_ms", 30.0)) and h.get("smoothing_ms", 30.0) >= 0):
        problems.append("'smoothing_ms' must be a finite number >= 0")
    for key in ("window_frames", "reprime_frames"):
        if h.get(key) is not None and not (_whole(h[key]) and h[key] > 0):
            problems.append(f"'{key}' must be a whole number > 0 or null")
    settings_problem = _settings_problem(h.get("settings", {}))
    if settings_problem:
        problems.append(settings_problem)
    vectors = h.get("vectors", [])
    if not isinstance(vectors, list) or not all(
            isinstance(v, dict) and isinstance(v.get("path"), str) and isinstance(v.get("sha256", ""), str)
            for v in vectors):
        problems.append("'vectors' must be a list of {path, sha256}")
    stems = h.get("stems", [])
    if not isinstance(stems, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str)
            and (NAME_RE.fullmatch(s["name"]) or (s.get("spare") is True and SPARE_RE.fullmatch(s["name"])))
            and isinstance(s.get("prompt"), str) and s["prompt"].strip() and len(s["prompt"]) <= MAX_PROMPT_CHARS
            and _seed(s.get("seed")) for s in stems) or len(stems) > MAX_STEMS:
        problems.append(f"'stems' must be a list of at most {MAX_STEMS} {{name, prompt, seed}}")
    if problems:
        raise PerformanceLogError(f"{path}: malformed header: {'; '.join(problems)}")
