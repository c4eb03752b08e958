"""Logs that a flood cannot bury: at most a few lines per kind per interval.

A misconfigured patch or a hostile sender can produce thousands of identical problems a
second. Each *kind* (say "undecodable packet" or "unmapped program change") gets
``per_interval`` lines per ``interval_s``; the rest are counted, and the next line of
that kind says how many were suppressed, so the log still tells the whole story.
Thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

MAX_KINDS = 256  # kinds are chosen by the code, not the sender, but stay bounded anyway

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


def log_format() -> str:
    """The format of every steerbridge process's log lines (the command's, the OSC front's).
    On a terminal each line first erases the one it starts on: serve's status line is drawn
    with a carriage return and no newline, and a log line from any process would otherwise
    be glued onto its end. The status line is drawn again on its next tick."""
    return ("\r\033[K" if sys.stderr.isatty() else "") + LOG_FORMAT


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, per_interval: int = 5, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.per_interval = per_interval
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, list[float | int]] = {}  # kind -> [window start, lines, suppressed]

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless this kind is over its budget. Returns whether it was logged.
        ``exc_info``: with the traceback of the exception being handled (for bugs only)."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(kind)
            if window is None:
                if len(self._windows) >= MAX_KINDS:
                    self._windows.clear()
                window = self._windows[kind] = [now, 0, 0]
            if now - window[0] >= self.interval_s:
                window[0], window[1] = now, 0
            if window[1] >= self.per_interval:
                window[2] += 1
                return False
            window[1] += 1
            suppressed, window[2] = int(window[2]), 0
        if suppressed:
            msg += " (%d more like this suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, msg, *args)

    def suppressed(self) -> dict[str, int]:
        """Lines held back and not yet reported, per kind."""
        with self._lock:
            return {k: int(w[2]) for k, w in self._windows.items() if w[2]}

    def flush(self) -> None:
        """Report what is still suppressed (at shutdown): one line per kind."""
        for kind, count in self.suppressed().items():
            self.logger.warning("%s: %d more suppressed", kind, count)
        with self._lock:
            for window in self._windows.values():
                window[2] = 0
