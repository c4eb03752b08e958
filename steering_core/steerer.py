"""The steerer: owns the live concepts and the hooks that apply them.

A concept is a ``SteeringVector`` plus a knob: ``alpha`` (a 0-d tensor on the model's
device, updated in place) and ``enabled``. ``set_alpha`` may be called from any
thread between any two frames; the hooks read the tensor at the next forward, so a
knob turn needs no re-registration and no host-device sync.

Hooks exist only inside ``with steerer.installed():``, which removes them on the way
out, error or not. Within a site, the plain ``add`` concepts go first (fused, see
``_install_all``); other operators follow in the order they were added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

from .models import MusicGenHandle
from .operators import Operator, get_operator
from .operators import add as add_operator
from .sites import attach
from .vectors import CFG_MODES, SteeringVector


@dataclass
class _Injection:
    """One concept at one layer: what a hook applies."""

    concept: str
    direction: torch.Tensor  # [d_model] on the model's device and dtype, times the layer gain
    operator: Operator
    alpha: torch.Tensor  # shared with the concept's knob: 0-d, updated in place
    cfg_mode: str


@dataclass
class Concept:
    vector: SteeringVector
    operator: str
    cfg_mode: str
    layers: tuple[int, ...]
    alpha: torch.Tensor
    enabled: bool = True
    slot: int = 0  # index into the steerer's alpha table

    @property
    def value(self) -> float:
        return float(self.alpha.item())


#: Knob table size: concepts one steerer holds at once.
MAX_CONCEPTS = 64


class Steerer:
    """Several concepts at once, each with its own layers, site, operator, CFG mode and alpha."""

    def __init__(self, handle: MusicGenHandle) -> None:
        self.handle = handle
        self.concepts: dict[str, Concept] = {}
        #: True while the batch holds CFG pairs: conditional rows first, unconditional after.
        self.cfg_batch = True
        self._sites: dict[tuple[int, str], list[_Injection]] = {}
        self._handles: dict[tuple[int, str], RemovableHandle] = {}
        self._row_masks: dict[tuple[int, str], torch.Tensor] = {}
        self._lock = threading.Lock()
        # Every knob lives in one table (each concept's alpha is a 0-d view into it), so
        # all the plain `add` concepts at a site fuse into one matrix-vector product.
        self._alpha_table = torch.zeros(MAX_CONCEPTS, device=handle.device, dtype=handle.dtype)
        self._enabled_table = torch.ones(MAX_CONCEPTS, device=handle.device, dtype=handle.dtype)

    # --- concepts ---------------------------------------------------------------
    def add(self, vector: SteeringVector, *, alpha: float = 0.0, operator: str | None = None,
            cfg_mode: str | None = None, layers: tuple[int, ...] | None = None,
            name: str | None = None) -> Concept:
        h = self.handle
        vector.check_compatible(h.d_model, h.num_layers, h.config_sha256)
        name = name or vector.concept
        if name in self.concepts:
            raise ValueError(f"concept {name!r} is already loaded")
        op_name = operator or vector.operator
        op = get_operator(op_name)
        mode = cfg_mode or vector.cfg_mode
        if mode not in CFG_MODES:
            raise ValueError(f"unknown cfg mode {mode!r}; choose one of {', '.join(CFG_MODES)}")
        use_layers = tuple(layers) if layers is not None else vector.layers
        missing = [layer for layer in use_layers if layer not in vector.layers]
        if missing:
            raise ValueError(f"vector {vector.concept!r} has no direction for layers {missing}")
        if len(self.concepts) >= MAX_CONCEPTS:
            raise ValueError(f"at most {MAX_CONCEPTS} concepts at once")
        slot = len(self.concepts)
        knob = self._alpha_table[slot]  # a view: fill_ on it writes the table
        knob.fill_(float(alpha))
        concept = Concept(vector, op_name, mode, use_layers, knob, slot=slot)
        with self._lock:
            self.concepts[name] = concept
            for layer in use_layers:
                i = vector.layers.index(layer)
                direction = (vector.directions[i] * vector.gains[i]).to(h.device, h.dtype)
                key = (layer, vector.site)
                self._sites.setdefault(key, []).append(_Injection(name, direction, op, knob, mode))
            if self._handles:  # hooks live: rebuild them to include the new concept
                self._remove_all()
                self._install_all()
        return concept

    def set_alpha(self, name: str, value: float) -> None:
        """Knob turn: takes effect at the next forward pass, from any thread."""
        self._concept(name).alpha.fill_(float(value))

    def set_enabled(self, name: str, enabled: bool) -> None:
        concept = self._concept(name)
        concept.enabled = bool(enabled)
        self._enabled_table[concept.slot] = 1.0 if enabled else 0.0

    def alphas(self) -> dict[str, float]:
        return {name: c.value for name, c in self.concepts.items()}

    def _concept(self, name: str) -> Concept:
        try:
            return self.concepts[name]
        except KeyError:
            known = ", ".join(self.concepts) or "none loaded"
            raise KeyError(f"unknown concept {name!r} (loaded: {known})") from None

    # --- hooks --------------------------------------------------------------------
    @contextmanager
    def installed(self) -> Iterator[Steerer]:
        """Hooks in place for the duration of the block, and gone after it, always."""
        if self._handles:
            raise RuntimeError("steering hooks are already installed")
        try:
            with self._lock:
                self._install_all()
            yield self
        finally:
            self._remove_all()

    @property
    def is_installed(self) -> bool:
        return bool(self._handles)

    # --- how the hooks work ------------------------------------------------------
    # `add` is linear, so every plain-add concept at every site is one column block of
    # a matrix M [concepts, groups * d_model] (a group: one site, one CFG mode). Once
    # per forward, a pre-hook on the first decoder layer turns the knobs into every
    # group's offset with one matrix product, (alpha * enabled) @ M, already masked to
    # the rows it steers; each site's hook is then a single add. Other operators
    # (renorm, ablate, ...) depend on h and run one by one after it.
    def _install_all(self) -> None:
        d = self.handle.d_model
        groups: list[tuple[tuple[int, str], str, list[_Injection]]] = []
        for key, injections in self._sites.items():
            for mode in CFG_MODES:
                adds = [i for i in injections if i.operator is add_operator and i.cfg_mode == mode]
                if adds:
                    groups.append((key, mode, adds))
        matrix = torch.zeros(MAX_CONCEPTS, max(1, len(groups)) * d, device=self.handle.device, dtype=self.handle.dtype)
        for g, (_, _, adds) in enumerate(groups):
            for inj in adds:
                matrix[self.concepts[inj.concept].slot, g * d:(g + 1) * d] += inj.direction
        self._fused = matrix
        self._group_modes = [mode for _, mode, _ in groups]
        self._group_masks: dict[tuple[int, bool], torch.Tensor] = {}
        self._row_deltas: tuple[torch.Tensor, ...] | None = None
        if groups:
            self._handles[(-1, "prepare")] = self.handle.decoder_layers[0].register_forward_pre_hook(self._prepare)
        for key in self._sites:
            mine = [g for g, (k, _, _) in enumerate(groups) if k == key]
            self._handles[key] = self._install(key, mine)

    def _remove_all(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _prepare(self, _module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        batch = args[0].shape[0]
        key = (batch, self.cfg_batch)
        matrix = self._group_masks.get(key)
        if matrix is None:  # fold the row masks into the matrix, once per batch layout
            probe = args[0].new_zeros(batch, 1)
            rows = [self._rows(probe, mode) for mode in self._group_modes]
            masks = torch.stack([torch.ones_like(probe) if r is None else r.to(probe.dtype).expand_as(probe)
                                 for r in rows])  # [groups, batch, 1]
            d = self.handle.d_model
            blocks = self._fused[:, : len(rows) * d].view(MAX_CONCEPTS, len(rows), 1, d)
            matrix = (blocks * masks[None]).reshape(MAX_CONCEPTS, -1)  # [concepts, groups * batch * d]
            self._group_masks[key] = matrix
        knobs = self._alpha_table * self._enabled_table
        # One product gives every site's offset for every row; unbind makes the views once.
        self._row_deltas = (knobs @ matrix).view(len(self._group_modes), batch, 1, -1).unbind(0)

    def _install(self, key: tuple[int, str], groups: list[int]) -> RemovableHandle:
        layer, site = key
        others = [inj for inj in self._sites[key] if inj.operator is not add_operator]

        def edit(h: torch.Tensor) -> torch.Tensor:
            deltas = self._row_deltas
            if deltas is not None:
                for g in groups:
                    h = h + deltas[g]
            for inj in others:
                if not self.concepts[inj.concept].enabled:
                    continue
                steered = inj.operator(h, inj.direction, inj.alpha)
                rows = self._rows(h, inj.cfg_mode)
                h = steered if rows is None else torch.where(rows, steered, h)
            return h

        return attach(self.handle.decoder_layers[layer], site, edit)

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
