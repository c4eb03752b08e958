"""The steerer: owns the live concepts and the hooks that apply them.

A concept is a ``SteeringVector`` plus a knob: ``alpha`` (a 0-d tensor on the model's
device, updated in place) and ``enabled``. ``set_alpha`` may be called from any
thread between any two frames; the hooks read the tensor at the next forward, so a
knob turn needs no re-registration and no host-device sync. Which calls are safe
from which thread is spelled out (and enforced) in ``Steerer``'s docstring.

Hooks exist only inside ``with steerer.installed():``, which removes them on the way
out, error or not. Within a site, the plain ``add`` concepts go first (fused, see
``_install_all``); other operators follow in the order they were added.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

from steering_core.errors import UnknownConceptError, UserError
from steering_core.model.loading import MusicGenHandle
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


#: Knob table size: concepts one steerer holds at once.
MAX_CONCEPTS = 64

#: Told of each knob turn: (concept slot, new alpha or None, new enabled or None).
KnobListener = Callable[[int, "float | None", "bool | None"], None]


class Steerer:
    """Several concepts at once, each with its own layers, site, operator, CFG mode and alpha.

    Threading model. Two kinds of call, two rules:

    * **Knobs, from any thread.** ``set_alpha`` and ``set_enabled`` only write a value
      into the knob table (and pass it to the knob listeners). Each write happens whole
      under the steerer's lock, so writers from several threads are serialised and every
      copy of a knob (the alpha and enabled tables, ``Concept.enabled``, each listener's
      own table) ends on the same last write. The forward pass reads the table without
      the lock, so a control thread can never stall the thread making audio; a knob turn
      lands at the forward that is running or at the next one. ``alphas()``,
      ``concepts`` and ``add_knob_listener`` are safe from any thread too.
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
        self._alpha_table = torch.zeros(MAX_CONCEPTS, device=handle.device, dtype=handle.dtype)
        self._enabled_table = torch.ones(MAX_CONCEPTS, device=handle.device, dtype=handle.dtype)
        # Streams that keep their own knob table (StaticStream) follow every knob turn here.
        self._knob_listeners: list[weakref.WeakMethod[KnobListener]] = []

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
            knob = self._alpha_table[slot]  # a view: fill_ on it writes the table
            knob.fill_(float(alpha))
            concept = Concept(vector, op_name, mode, use_layers, knob, slot=slot, value=float(alpha))
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

    def set_alpha(self, name: str, value: float) -> None:
        """Knob turn: takes effect at the next forward pass, from any thread."""
        with self._lock:  # the table and every listener's copy move together
            concept = self._concept(name)
            concept.alpha.fill_(float(value))
            concept.value = float(value)
            self._notify(concept.slot, float(value), None)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a concept on or off from the next forward pass, from any thread."""
        with self._lock:  # the flag (read by operator hooks) and the table (fused adds) agree
            concept = self._concept(name)
            concept.enabled = bool(enabled)
            self._enabled_table[concept.slot] = 1.0 if enabled else 0.0
            self._notify(concept.slot, None, bool(enabled))

    def add_knob_listener(self, listener: KnobListener) -> None:
        """Call ``listener(slot, alpha, enabled)`` (None for what did not change) after every
        ``set_alpha``/``set_enabled``, on the caller's thread, under the steerer's lock (keep
        it short: it is a table write). ``listener`` must be a bound method; it is held
        weakly, so a stream that is gone stops being called."""
        with self._lock:
            self._knob_listeners.append(weakref.WeakMethod(listener))  # type: ignore[arg-type]

    def _notify(self, slot: int, alpha: float | None, enabled: bool | None) -> None:
        for ref in tuple(self._knob_listeners):
            listener = ref()
            if listener is None:
                self._knob_listeners = [r for r in self._knob_listeners if r is not ref]
            else:
                listener(slot, alpha, enabled)

    def alphas(self) -> dict[str, float]:
        """Every knob as it plays now (host values: no device sync), from any thread."""
        with self._lock:
            return {name: c.value for name, c in self.concepts.items()}

    def alpha(self, name: str) -> float:
        """One knob as it plays now, from any thread."""
        return self._concept(name).value

    def slot(self, name: str) -> int:
        """The concept's row in the knob table (streams with their own tables use it)."""
        return self._concept(name).slot

    @contextmanager
    def knob_writes(self) -> Iterator[None]:
        """Hold the knob lock: for a stream that writes its own copy of the knob table
        outside ``set_alpha`` (one row of a batch), so it cannot interleave with a
        steerer-wide write and leave the copies torn."""
        with self._lock:
            yield

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
    def _install_all(self, resid_inline: bool = False) -> None:
        d = self.handle.d_model
        add_sites = [key for key, injections in self._sites.items()
                     if any(i.operator is add_operator for i in injections)]
        n = len(self.concepts)
        matrix = torch.zeros(n, len(CFG_MODES), len(add_sites), d, device=self.handle.device, dtype=self.handle.dtype)
        for s, key in enumerate(add_sites):
            for inj in self._sites[key]:
                if inj.operator is add_operator:
                    matrix[self.concepts[inj.concept].slot, CFG_MODES.index(inj.cfg_mode), s] += inj.direction * inj.gain
        self._fused = matrix  # [concepts, cfg modes, sites, d]
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
            probe = torch.zeros(batch, 1, device=self.handle.device, dtype=self.handle.dtype)
            masks = torch.stack([torch.ones_like(probe) if r is None else r.to(probe.dtype).expand_as(probe)
                                 for r in (self._rows(probe, mode) for mode in CFG_MODES)])  # [modes, batch, 1]
            # [concepts, modes, sites, 1, d] * [1, modes, 1, batch, 1], summed over the modes
            matrix = (self._fused[:, :, :, None, :] * masks[None, :, None, :, :]).sum(dim=1)
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
