"""The steerer: owns the live concepts and the hooks that apply them.

A concept is a ``SteeringVector`` plus a knob: ``alpha`` (a 0-d tensor on the model's
device, updated in place) and ``enabled``. The steerer owns every copy of every knob:
its shared table (read by the hooks and the decode loop), the per-stream table a
batched static step reads (``stream_knobs``), and the host values ``alphas()`` reports.
The hooks read the tensors at the next forward, so a knob turn needs no
re-registration and no host-device sync. Who may write knobs, and which calls are safe
from which thread, is spelled out (and enforced) in ``Steerer``'s docstring.

Hooks exist only inside ``with steerer.installed():``, which removes them on the way
out, error or not. Within a site, the plain ``add`` concepts go first (fused, see
``_install_all``); other operators follow in the order they were added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.hooks import RemovableHandle

from steering_core.errors import UnknownConceptError, UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.fold import AddTerm, add_matrix, cfg_row_masks, fold_rows
from steering_core.steer.knobs import MAX_CONCEPTS, KnobDriver, KnobListener, KnobTables, StreamKnobs
from steering_core.steer.operators import Operator, get_operator
from steering_core.steer.operators import add as add_operator
from steering_core.steer.sites import attach
from steering_core.steer.vectors import CFG_MODES, SteeringVector, VectorMismatchError


@dataclass
class _Injection:
    """One concept at one layer: what a hook applies."""

    concept: str
    direction: torch.Tensor  # [d_model] unit length, on the model's device and dtype
    gain: float  # the vector's gain at this layer: operators act with strength alpha * gain
    operator: Operator
    alpha: torch.Tensor  # shared with the concept's knob: 0-d, updated in place
    cfg_mode: str


@dataclass
class _Folded:
    """The fused add matrix for one batch layout, and the buffer its product lands in."""

    matrix_t: torch.Tensor  # [sites * batch * d_model, concepts], row masks folded in
    out: torch.Tensor  # [sites * batch * d_model], rewritten every forward
    site_deltas: tuple[torch.Tensor, ...]  # per add site: a [batch, 1, d_model] view of out
    layer_offsets: list[torch.Tensor | None]  # per decoder layer, for resid_inline mode


@dataclass
class Concept:
    vector: SteeringVector
    operator: str
    cfg_mode: str
    layers: tuple[int, ...]
    alpha: torch.Tensor  # the knob on the device, a view into the steerer's table (read by the hooks)
    enabled: bool = True
    slot: int = 0  # index into the steerer's alpha table
    #: The knob as last written, on the host: what ``alphas()`` reports without a device sync.
    #: Written with ``alpha``, under the steerer's lock, so the two never disagree.
    value: float = 0.0
    #: Per stream (row of a batch), on the host: ``values[0]`` is ``value`` and
    #: ``enables[0]`` is ``enabled`` (stream 0's knob is the shared one).
    values: list[float] = field(default_factory=list)
    enables: list[bool] = field(default_factory=list)


class Steerer:
    """Several concepts at once, each with its own layers, site, operator, CFG mode and alpha.

    Threading model. Three rules:

    * **Knobs, from any thread, until something drives them.** ``set_alpha`` and
      ``set_enabled`` only write a value into the knob tables (the shared one, the
      per-stream one if a batched stream asked for it, the host values; and pass it to
      the knob listeners). Each write happens whole under the steerer's lock, so writers
      from several threads are serialised and every copy of a knob ends on the same last
      write. The forward pass reads the tables without the lock, so a control thread can
      never stall the thread making audio; a knob turn lands at the forward that is
      running or at the next one. ``alphas()``, ``concepts`` and ``add_knob_listener``
      are safe from any thread too.
    * **One driver.** Once ``drive_knobs`` has handed out a ``KnobDriver`` (a
      ``Performance`` takes one when it first applies or steps), knobs change only
      through it: ``set_alpha``/``set_enabled`` from any caller on any thread raise
      ``RuntimeError`` naming the caller's thread and the driver and its thread (a write
      beside the driver would never reach its targets, its log or its replay). The
      driver is released when its owner is garbage-collected.
    * **Structure, on the owning thread only.** ``add``, ``installed()``,
      ``layer_offsets()`` and the forward pass through the installed hooks change or
      read what the hooks are built from. While hooks are installed, the thread that
      entered ``installed()`` owns the steerer: any of these calls from another thread
      raises ``RuntimeError`` naming the call and both threads (a foreign forward pass
      would race the owner's on the shared offset buffers; a foreign ``add`` would
      rebuild the hooks under it). With no hooks installed there is no owner: ``add``
      may come from any thread, serialised by the lock, so a steerer can be built on
      one thread (the server's main thread loads the vectors) and steered on another
      (the engine thread enters ``installed()`` for the whole set).
    """

    def __init__(self, handle: MusicGenHandle) -> None:
        self.handle = handle
        self.concepts: dict[str, Concept] = {}
        #: True while the batch holds CFG pairs: conditional rows first, unconditional after.
        self.cfg_batch = True
        self._sites: dict[tuple[int, str], list[_Injection]] = {}
        self._handles: dict[tuple[int, str], RemovableHandle] = {}
        self._row_masks: dict[tuple[int, str], torch.Tensor] = {}
        #: True inside ``installed(resid_inline=True)``: the decode loop adds ``layer_offsets()``.
        self.resid_inline = False
        # Guards the knob writes and structural changes (see the class docstring). Reentrant
        # so that a knob listener that turns another knob cannot deadlock.
        self._lock = threading.RLock()
        #: The thread inside ``installed()``, None when no hooks are installed.
        self._owner: threading.Thread | None = None
        self._owner_ident: int | None = None
        # Every knob lives in one table (each concept's alpha is a 0-d view into it), so
        # all the plain `add` concepts at a site fuse into one matrix-vector product.
        self._tables = KnobTables(self._lock, handle.device, handle.dtype)
        self._alpha_table, self._enabled_table = self._tables.alpha, self._tables.enabled

    # --- concepts ---------------------------------------------------------------
    def add(self, vector: SteeringVector, *, alpha: float = 0.0, operator: str | None = None,
            cfg_mode: str | None = None, layers: tuple[int, ...] | None = None,
            name: str | None = None) -> Concept:
        h = self.handle
        vector.check_compatible(h.d_model, h.num_layers, h.config_sha256)
        name = name or vector.concept
        op_name = operator or vector.operator
        op = get_operator(op_name)
        mode = cfg_mode or vector.cfg_mode
        if mode not in CFG_MODES:
            raise UserError(f"unknown cfg mode {mode!r}; choose one of {', '.join(CFG_MODES)}")
        use_layers = tuple(layers) if layers is not None else vector.layers
        missing = [layer for layer in use_layers if layer not in vector.layers]
        if missing:
            raise VectorMismatchError(f"vector {vector.concept!r} has no direction for layers {missing}")
        with self._lock:
            self._check_owner("add")
            # The name check and the slot are taken under the lock: two threads adding at
            # once must not both get the same slot.
            if name in self.concepts:
                raise UserError(f"concept {name!r} is already loaded")
            if len(self.concepts) >= MAX_CONCEPTS:
                raise UserError(f"at most {MAX_CONCEPTS} concepts at once")
            slot = len(self.concepts)
            knob = self._tables.new_knob(slot, float(alpha))
            streams = self._tables.streams
            concept = Concept(vector, op_name, mode, use_layers, knob, slot=slot, value=float(alpha),
                              values=[float(alpha)] * streams, enables=[True] * streams)
            self.concepts[name] = concept
            for layer in use_layers:
                i = vector.layers.index(layer)
                direction = vector.directions[i].to(h.device, h.dtype)
                key = (layer, vector.site)
                self._sites.setdefault(key, []).append(_Injection(name, direction, float(vector.gains[i]), op, knob, mode))
            if self.is_installed:  # hooks live: rebuild them to include the new concept
                inline = self.resid_inline
                self._remove_all()
                self._install_all(inline)
        return concept

    def set_alpha(self, name: str, value: float, stream: int | None = None) -> None:
        """Knob turn for every stream, or one (a row of a batch that reads ``stream_knobs``):
        takes effect at the next forward pass, from any thread, unless something drives the knobs."""
        self._tables.refuse_if_driven("set_alpha")
        self._tables.write_alpha(self._concept(name), value, stream)

    def set_enabled(self, name: str, enabled: bool, stream: int | None = None) -> None:
        """Switch a concept on or off from the next forward pass, for every stream or one;
        from any thread, unless something drives the knobs."""
        self._tables.refuse_if_driven("set_enabled")
        self._tables.write_enabled(self._concept(name), enabled, stream)

    @property
    def streams(self) -> int:
        """Knob rows: the batch of the stream that asked for ``stream_knobs``, else 1."""
        return self._tables.streams

    def stream_knobs(self, streams: int) -> StreamKnobs:
        """The per-stream knob table for a batch of ``streams`` rows (``StaticStream`` reads it):
        made on the first call, rows filled with the knobs as they are; from then on
        ``set_alpha(..., stream=i)`` turns one row's knob. One batch size per steerer."""
        with self._lock:
            return self._tables.per_stream(streams, list(self.concepts.values()))

    def drive_knobs(self, owner: object, name: str) -> KnobDriver:
        """Make the returned driver the only writer of this steerer's knobs, for as long as
        ``owner`` lives (see the class docstring). Raises if another driver holds them."""
        return self._tables.drive(owner, self._concept, name)

    def add_knob_listener(self, listener: KnobListener) -> None:
        """Call ``listener(slot, alpha, enabled)`` (None for what did not change) after every
        turn of a shared knob, on the caller's thread, under the steerer's lock (keep it
        short: it is a table write). ``listener`` must be a bound method; it is held
        weakly, so a stream that is gone stops being called."""
        self._tables.add_listener(listener)

    def alphas(self, stream: int = 0) -> dict[str, float]:
        """Every knob as it plays now (host values: no device sync) on one stream, from any thread."""
        with self._lock:
            row = self._tables.rows_of(stream)[0]
            return {name: c.values[row] for name, c in self.concepts.items()}

    def alpha(self, name: str, stream: int = 0) -> float:
        """One knob as it plays now, from any thread."""
        with self._lock:
            return self._concept(name).values[self._tables.rows_of(stream)[0]]

    def slot(self, name: str) -> int:
        """The concept's row in the knob table (streams with their own tables use it)."""
        return self._concept(name).slot

    def _concept(self, name: str) -> Concept:
        try:
            return self.concepts[name]
        except KeyError:
            known = ", ".join(self.concepts) or "none loaded"
            raise UnknownConceptError(f"unknown concept {name!r} (loaded: {known})") from None

    # --- hooks --------------------------------------------------------------------
    @contextmanager
    def installed(self, *, resid_inline: bool = False) -> Iterator[Steerer]:
        """Hooks in place for the duration of the block, and gone after it, always.

        ``resid_inline=True`` is for a decode loop that calls the decoder layers itself
        (``MusicStream``): the plain ``add`` offsets on the residual stream get no hook,
        and the loop adds ``layer_offsets()`` to each layer's output instead. On a small
        model the hook calls were most of what steering cost. Every other site and
        operator is still a hook, so the result is the same to the bit.
        """
        with self._lock:
            self._check_owner("installed()")
            if self.is_installed:
                raise RuntimeError("steering hooks are already installed")
            self._owner, self._owner_ident = threading.current_thread(), threading.get_ident()
            try:
                self._install_all(resid_inline)
            except BaseException:
                self._uninstall()
                raise
        try:
            yield self
        finally:
            with self._lock:
                self._uninstall()

    def _uninstall(self) -> None:
        """Hooks gone and no owner: from here any thread may ``add`` again."""
        self._remove_all()
        self._owner = self._owner_ident = None

    @property
    def is_installed(self) -> bool:
        # The owner, not the handles: a steerer with no concepts yet installs no hooks, but
        # an ``add`` inside the block must still hook the new concept.
        return self._owner is not None

    def _check_owner(self, call: str) -> None:
        """Raise if hooks are installed by another thread (see the class docstring)."""
        if self._owner_ident is not None and threading.get_ident() != self._owner_ident:
            owner = self._owner.name if self._owner is not None else "?"
            raise RuntimeError(f"Steerer.{call} called from thread {threading.current_thread().name!r}, but the "
                               f"steerer's hooks are installed by thread {owner!r}: structural calls and the "
                               "forward pass belong to that thread; other threads may only turn knobs "
                               "(set_alpha, set_enabled)")

    def layer_offsets(self, batch: int) -> list[torch.Tensor | None]:
        """Once per forward, before the first layer, in ``resid_inline`` mode: what to add
        to each decoder layer's output ([batch, 1, d_model], or None for no offset)."""
        if threading.get_ident() != self._owner_ident:
            self._check_owner("layer_offsets()")
        if not self.resid_inline:
            raise RuntimeError("layer_offsets() is for installed(resid_inline=True)")
        return self._compute_deltas(batch).layer_offsets

    # --- how the hooks work ------------------------------------------------------
    # `add` is linear, so every plain-add concept at every site is one column block of
    # a matrix M [concepts, sites * batch * d_model], with each concept's CFG row mask
    # folded in. Once per forward (a pre-hook on the first decoder layer, or the decode
    # loop itself in resid_inline mode), one product (alpha * enabled) @ M, written into
    # a fixed buffer, gives every site's offset for every row; each site is then a single
    # add of a view into that buffer. Fixed buffers and in-place knobs keep it CUDA-graph
    # safe. Other operators (renorm, ablate, ...) depend on h and run one by one after it.
    def add_matrix(self, sites: Sequence[tuple[int, str]]) -> torch.Tensor:
        """The plain ``add`` concepts at ``sites`` (``(layer, site)`` keys), as ``fold.add_matrix``
        lays them out: [concepts, cfg modes, len(sites), d_model]. Structure: owning thread only."""
        self._check_owner("add_matrix()")
        terms = [AddTerm(self.concepts[inj.concept].slot, inj.cfg_mode, s, inj.direction, inj.gain)
                 for s, key in enumerate(sites) for inj in self._sites.get(key, ()) if inj.operator is add_operator]
        h = self.handle
        return add_matrix(terms, len(self.concepts), len(sites), h.d_model, h.device, h.dtype)

    def _install_all(self, resid_inline: bool = False) -> None:
        add_sites = [key for key, injections in self._sites.items()
                     if any(i.operator is add_operator for i in injections)]
        self._fused = self.add_matrix(add_sites)  # [concepts, cfg modes, sites, d]
        n = len(self.concepts)
        self._knobs = (self._alpha_table[:n], self._enabled_table[:n], torch.empty_like(self._alpha_table[:n]))
        self._folded: dict[tuple[int, bool], _Folded] = {}
        self._row_deltas: tuple[torch.Tensor, ...] = ()
        # A site goes inline only if plain adds are all it has: adds come first at a site.
        inline = {key for key in add_sites if resid_inline and key[1] == "resid_post"
                  and all(i.operator is add_operator for i in self._sites[key])}
        self._inline_sites: list[int | None] = [
            add_sites.index((layer, "resid_post")) if (layer, "resid_post") in inline else None
            for layer in range(self.handle.num_layers)]
        self.resid_inline = resid_inline
        if add_sites and not resid_inline:
            self._handles[(-1, "prepare")] = self.handle.decoder_layers[0].register_forward_pre_hook(self._prepare)
        for key in self._sites:
            if key not in inline:
                self._handles[key] = self._install(key, add_sites.index(key) if key in add_sites else None)

    def _remove_all(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self.resid_inline = False

    def _prepare(self, _module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if threading.get_ident() != self._owner_ident:  # one int compare per forward
            self._check_owner("forward pass")
        self._compute_deltas(args[0].shape[0])

    def _compute_deltas(self, batch: int) -> _Folded:
        folded = self._folded.get((batch, self.cfg_batch))
        if folded is None:
            folded = self._fold(batch)
        alpha, enabled, knobs = self._knobs
        torch.mul(alpha, enabled, out=knobs)
        torch.mv(folded.matrix_t, knobs, out=folded.out)
        self._row_deltas = folded.site_deltas
        return folded

    def _fold(self, batch: int) -> _Folded:
        """The row masks folded into the matrix, and its output buffer: once per batch layout."""
        # Built as ordinary tensors (and views) even inside inference mode: the buffer is
        # rewritten in place every forward, and may be read outside inference mode too.
        with torch.inference_mode(False):
            masks = cfg_row_masks(batch, self.cfg_batch, self.handle.device, self.handle.dtype)
            matrix = fold_rows(self._fused, masks)  # [concepts, sites, batch, d]
            matrix_t = matrix.reshape(matrix.shape[0], -1).T.contiguous()  # [sites * batch * d, concepts]
            out = torch.zeros(matrix_t.shape[0], device=matrix_t.device, dtype=matrix_t.dtype)
            site_deltas = out.view(-1, batch, 1, self.handle.d_model).unbind(0)
        layer_offsets = [None if s is None else site_deltas[s] for s in self._inline_sites]
        folded = _Folded(matrix_t, out, site_deltas, layer_offsets)
        self._folded[(batch, self.cfg_batch)] = folded
        return folded

    def _install(self, key: tuple[int, str], site: int | None) -> RemovableHandle:
        layer, site_name = key
        others = [inj for inj in self._sites[key] if inj.operator is not add_operator]

        def edit(h: torch.Tensor) -> torch.Tensor:
            if threading.get_ident() != self._owner_ident:
                self._check_owner("forward pass")
            if site is not None:
                h = h + self._row_deltas[site]
            for inj in others:
                if not self.concepts[inj.concept].enabled:
                    continue
                strength = inj.alpha if inj.gain == 1.0 else inj.alpha * inj.gain
                steered = inj.operator(h, inj.direction, strength)
                rows = self._rows(h, inj.cfg_mode)
                h = steered if rows is None else torch.where(rows, steered, h)
            return h

        return attach(self.handle.decoder_layers[layer], site_name, edit)

    def _rows(self, h: torch.Tensor, mode: str) -> torch.Tensor | None:
        """Which batch rows a concept steers: conditional rows come first in a CFG batch."""
        if mode == "both":
            return None
        if not self.cfg_batch:  # every row is conditional
            return None if mode == "cond" else torch.zeros((), dtype=torch.bool, device=h.device)
        batch = h.shape[0]
        key = (batch, mode)
        mask = self._row_masks.get(key)
        if mask is None:
            cond = torch.arange(batch, device=h.device) < batch // 2
            mask = (cond if mode == "cond" else ~cond).view(batch, *([1] * (h.ndim - 1)))
            self._row_masks[key] = mask
        return mask
