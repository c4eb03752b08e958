"""Every copy of every knob, in one place, and who may write them (``Steerer`` holds one).

A knob lives in up to four copies, all written together under the steerer's lock: the
shared device tables (alpha and enabled, [concepts], the model dtype, read by the hooks
and the decode loop), the per-stream device table a batched static step reads
(``StreamKnobs``, [streams, concepts] float32), the host values (``Concept.value``,
``values``, ``enabled``, ``enables``: what ``alphas()`` reports without a device sync),
and each knob listener's own copy. Stream 0's knob is the shared one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from steering_core.errors import UserError

#: Knob table size: concepts one steerer holds at once.
MAX_CONCEPTS = 64

#: Told of each turn of a shared knob: (concept slot, new alpha or None, new enabled or None).
KnobListener = Callable[[int, "float | None", "bool | None"], None]


class KnobHost(Protocol):
    """A concept's own copies of its knob (``steerer.Concept``)."""

    alpha: torch.Tensor  # 0-d view into the shared alpha table
    slot: int
    value: float
    enabled: bool
    values: list[float]
    enables: list[bool]


@dataclass(frozen=True)
class StreamKnobs:
    """The per-stream knob table a batched stream reads: [streams, MAX_CONCEPTS] float32
    (cast to the model dtype at use, so a knob keeps its full precision)."""

    alpha: torch.Tensor
    enabled: torch.Tensor


class KnobDriver:
    """The one writer of a steerer's knobs once something drives them (``Steerer.drive_knobs``):
    a ``Performance`` smooths and schedules knobs on its thread and writes them through this."""

    def __init__(self, tables: KnobTables, concept: Callable[[str], KnobHost], name: str) -> None:
        self._tables, self._concept = tables, concept
        self.name = name
        self.thread = threading.current_thread()

    def set_alpha(self, name: str, value: float, stream: int | None = None) -> None:
        self._tables.write_alpha(self._concept(name), value, stream)

    def set_enabled(self, name: str, enabled: bool, stream: int | None = None) -> None:
        self._tables.write_enabled(self._concept(name), enabled, stream)


class KnobTables:
    """The knob copies of one steerer and its write rules (see the module doc)."""

    def __init__(self, lock: threading.RLock, device: torch.device, dtype: torch.dtype) -> None:
        self._lock = lock
        self.alpha = torch.zeros(MAX_CONCEPTS, device=device, dtype=dtype)
        self.enabled = torch.ones(MAX_CONCEPTS, device=device, dtype=dtype)
        #: Knob rows a batched stream reads (``per_stream``); one (the shared table) until then.
        self.streams = 1
        self._per_stream: StreamKnobs | None = None
        self._listeners: list[weakref.WeakMethod[KnobListener]] = []
        self.driver: KnobDriver | None = None

    def new_knob(self, slot: int, alpha: float) -> torch.Tensor:
        """A new concept's knob at ``slot``: its 0-d view into the shared table."""
        knob = self.alpha[slot]  # a view: fill_ on it writes the table
        knob.fill_(alpha)
        self.enabled[slot] = 1.0
        if self._per_stream is not None:
            self._per_stream.alpha[:, slot] = alpha
            self._per_stream.enabled[:, slot] = 1.0
        return knob

    def write_alpha(self, concept: KnobHost, value: float, stream: int | None) -> None:
        value = float(value)
        with self._lock:  # the tables and every listener's copy move together
            rows = self.rows_of(stream)
            for row in rows:
                concept.values[row] = value
            if self._per_stream is not None:
                self._per_stream.alpha[slice(None) if stream is None else stream, concept.slot] = value
            if 0 in rows:  # stream 0's knob is the shared one
                concept.alpha.fill_(value)
                concept.value = value
                self._notify(concept.slot, value, None)

    def write_enabled(self, concept: KnobHost, enabled: bool, stream: int | None) -> None:
        enabled = bool(enabled)
        with self._lock:  # the flag (read by operator hooks) and the tables (fused adds) agree
            rows = self.rows_of(stream)
            for row in rows:
                concept.enables[row] = enabled
            if self._per_stream is not None:
                self._per_stream.enabled[slice(None) if stream is None else stream, concept.slot] = float(enabled)
            if 0 in rows:
                concept.enabled = enabled
                self.enabled[concept.slot] = 1.0 if enabled else 0.0
                self._notify(concept.slot, None, enabled)

    def rows_of(self, stream: int | None) -> range:
        if stream is None:
            return range(self.streams)
        if not (isinstance(stream, int) and 0 <= stream < self.streams):
            raise UserError(f"stream must be 0..{self.streams - 1} (the batch's rows), got {stream!r}")
        return range(stream, stream + 1)

    def per_stream(self, streams: int, concepts: list[KnobHost]) -> StreamKnobs:
        with self._lock:
            if self._per_stream is None:
                dev = self.alpha.device
                with torch.inference_mode(False):  # written in place in and out of inference mode
                    alpha = torch.zeros(streams, MAX_CONCEPTS, device=dev, dtype=torch.float32)
                    enabled = torch.ones(streams, MAX_CONCEPTS, device=dev, dtype=torch.float32)
                for c in concepts:
                    alpha[:, c.slot] = c.value
                    enabled[:, c.slot] = 1.0 if c.enabled else 0.0
                    c.values, c.enables = [c.value] * streams, [c.enabled] * streams
                self.streams, self._per_stream = streams, StreamKnobs(alpha, enabled)
            elif streams != self.streams:
                raise UserError(f"this steerer's per-stream knobs are for {self.streams} streams, not {streams}")
            return self._per_stream

    def drive(self, owner: object, concept: Callable[[str], KnobHost], name: str) -> KnobDriver:
        with self._lock:
            if self.driver is not None:
                raise RuntimeError(f"this steerer's knobs are already driven by {self.driver.name} on thread "
                                   f"{self.driver.thread.name!r}; one driver per steerer")
            driver = KnobDriver(self, concept, name)
            self.driver = driver
            weakref.finalize(owner, self._release, driver)
            return driver

    def _release(self, driver: KnobDriver) -> None:
        with self._lock:
            if self.driver is driver:
                self.driver = None

    def refuse_if_driven(self, call: str) -> None:
        driver = self.driver
        if driver is not None:
            raise RuntimeError(f"Steerer.{call} from thread {threading.current_thread().name!r}, but this "
                               f"steerer's knobs are driven by {driver.name} on thread {driver.thread.name!r}: "
                               "change them through it (Performance.apply), or the change misses its timeline")

    def add_listener(self, listener: KnobListener) -> None:
        with self._lock:
            self._listeners.append(weakref.WeakMethod(listener))

    def _notify(self, slot: int, alpha: float | None, enabled: bool | None) -> None:
        for ref in tuple(self._listeners):
            listener = ref()
            if listener is None:
                self._listeners = [r for r in self._listeners if r is not ref]
            else:
                listener(slot, alpha, enabled)
