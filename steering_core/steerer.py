"""The steerer: owns the live concepts and the hooks that apply them.

A concept is a ``SteeringVector`` plus a knob: ``alpha`` (a 0-d tensor on the model's
device, updated in place) and ``enabled``. ``set_alpha`` may be called from any
thread between any two frames; the hooks read the tensor at the next forward, so a
knob turn needs no re-registration and no host-device sync.

Hooks exist only inside ``with steerer.installed():``, which removes them on the way
out, error or not. Within a site, concepts are applied in the order they were added.
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

    @property
    def value(self) -> float:
        return float(self.alpha.item())


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
        knob = torch.tensor(float(alpha), device=h.device, dtype=h.dtype)
        concept = Concept(vector, op_name, mode, use_layers, knob)
        with self._lock:
            self.concepts[name] = concept
            for layer in use_layers:
                i = vector.layers.index(layer)
                direction = (vector.directions[i] * vector.gains[i]).to(h.device, h.dtype)
                key = (layer, vector.site)
                self._sites.setdefault(key, []).append(_Injection(name, direction, op, knob, mode))
                if self._handles and key not in self._handles:
                    self._handles[key] = self._install(key)
        return concept

    def set_alpha(self, name: str, value: float) -> None:
        """Knob turn: takes effect at the next forward pass, from any thread."""
        self._concept(name).alpha.fill_(float(value))

    def set_enabled(self, name: str, enabled: bool) -> None:
        self._concept(name).enabled = bool(enabled)

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
                for key in self._sites:
                    self._handles[key] = self._install(key)
            yield self
        finally:
            for handle in self._handles.values():
                handle.remove()
            self._handles.clear()

    @property
    def is_installed(self) -> bool:
        return bool(self._handles)

    def _install(self, key: tuple[int, str]) -> RemovableHandle:
        layer, site = key
        injections = self._sites[key]

        def edit(h: torch.Tensor) -> torch.Tensor:
            for inj in injections:
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
