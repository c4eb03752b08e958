"""Stems that come and go while the set plays: ``/stem/add name prompt`` and ``/stem/remove name``.

The mechanism is spare rows (``serve --stem-spares N``): the batch is built with N rows more
than the set's stems, each generating from a prompt and a seed of its own, unheard and
unrecorded. ``/stem/add`` gives a spare row to the new stem: its prompt, a seed no other
stem has and an unmute, all quantised to the next bar of the shared clock, so the row's
tokens from that step on are the new stem's and its sound starts on the bar line
(``StemMix`` keeps it silent before that sample). ``/stem/remove`` mutes the row at once,
puts its knobs back to zero and makes it spare again.

Why spare rows and not a batch rebuilt with a row more or less: the batch's shape never
changes, so the other stems' K/V, history, RNG state, CUDA graph and codec state are never
touched. There is nothing to rebuild, nothing that could cost a gap, and their tokens are
bit for bit what they would have been. A replay builds the same rows from the log's header
and plays the add and remove as the ordinary per-row changes they are, so its tokens match.
The price is a row's compute for each spare, paid all along, and a cap set at start.

The checks and the bookkeeping run on the control thread that received the message (under
this object's lock): the row's asked state and the control table (``ControlState.put_stem``),
the table handed to the OSC front again, the performance log's row name. The mix takes the
stem's entry or exit on the engine thread, when the change that makes it is applied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from steering_core.steer.vectors import SteeringVector
from steering_core.stream.settings import SETTINGS
from steering_core.stream.timeline import Change

from .chains import load_chain
from .commands import Plan
from .control import StemView
from .performance_log import PerformanceLog
from .setfile import SetFileError, StemSpec, check_stem_name
from .stem_table import StemTable
from .stems import SPARE_PROMPT, LiveStems, stem_knobs
from .targets import ControlError


class StemLifecycle:
    """Adds and removes the stems of a playing set (see the module doc)."""

    def __init__(self, live: LiveStems, vectors: Sequence[SteeringVector], chain: str,
                 perf_log: PerformanceLog | None, publish: Callable[[StemTable], None]) -> None:
        self.live = live
        self.vectors = list(vectors)
        self.chain = chain
        self.perf_log = perf_log
        self.publish = publish
        self._seeds = {s.seed for s in live.specs}  # every seed a row has had: a new stem's is none of them
        self._lock = threading.Lock()

    def _rename(self, row: int, name: str) -> None:
        """The row's per-stem output ports follow its name (only JACK has any; on this thread)."""
        rename = getattr(self.live.output, "rename_stem", None)
        if rename is not None:
            rename(row, name)

    def entering(self, row: int) -> bool:
        """Whether row ``row``'s stem was added and waits for its bar to enter."""
        return (row, True) in self.live.path.pending

    def add(self, name: str, prompt: str) -> Plan:
        with self._lock:
            live = self.live
            try:
                check_stem_name(name, "/stem/add")
            except SetFileError as exc:
                raise ControlError(str(exc)) from None
            if name in live.names:
                raise ControlError(f"/stem/add: there is a stem {name!r} already (stems: {', '.join(live.names)})")
            if not live.spare:
                raise ControlError(f"/stem/add: no spare row left ({len(live.names)} stems play; "
                                   "serve --stem-spares N keeps N rows for stems added while playing)")
            row = min(live.spare)
            seed = max(self._seeds) + 1
            spec = StemSpec(name, prompt, seed, self.chain)
            chain = load_chain(self.chain)
            knobs = stem_knobs(spec, self.vectors)
            self._seeds.add(seed)
            live.path.pending[(row, True)] = (name, chain)
            live.specs[row] = spec
            live.spare.discard(row)
            if self.perf_log is not None:
                self.perf_log.stem_names[row] = name
            # It samples with the set's settings, not whatever the row's last stem was given.
            shared = live.control.asked().settings
            self.publish(live.control.put_stem(row, StemView(name, knobs, prompt, settings=dict(shared))))
            self._rename(row, name)  # its JACK ports: silent until the bar, as the row's mix is
            # One event on the next bar: the row's tokens are the new stem's from that step, and its sound too.
            return Plan([Change("prompt", prompt, stream=row), Change("seed", seed, stream=row),
                         *(Change(s.name, shared[s.field], stream=row) for s in SETTINGS),
                         Change("solo", False, stream=row), Change("mute", False, stream=row)], quantize="bar")

    def remove(self, name: str) -> Plan:
        with self._lock:
            live = self.live
            if name not in live.names:
                raise ControlError(f"/stem/remove: no stem {name[:64]!r} (stems: {', '.join(live.names)})")
            if len(live.names) == 1:
                raise ControlError(f"/stem/remove: {name!r} is the last stem; a set plays at least one")
            row = next(r for r, s in enumerate(live.specs) if s.name == name and r not in live.spare)
            if (row, True) in live.path.pending:  # its remove would land before its entry
                raise ControlError(f"/stem/remove: {name!r} enters on the next bar; remove it once it plays")
            live.path.pending[(row, False)] = None
            old = live.specs[row]
            live.specs[row] = StemSpec(f"spare{row}", old.prompt, old.seed, old.chain)
            live.spare.add(row)
            self._rename(row, f"spare{row}")  # the fade-out plays on the spare name's ports
            knobs = stem_knobs(StemSpec(name, SPARE_PROMPT, 0), self.vectors)
            self.publish(live.control.put_stem(row, StemView(f"spare{row}", knobs, old.prompt, active=False)))
            # Silent at once; its knobs back to zero, so a stem given the row later starts from none.
            return Plan([Change("mute", True, stream=row),
                         *(Change("alpha", 0.0, v.concept, row) for v in self.vectors),
                         *(Change("enabled", True, v.concept, row) for v in self.vectors)])
