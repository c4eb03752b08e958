"""The fold of plain ``add`` concepts into one offset per site and batch row.

``add`` is linear, so every plain-add concept at every site is one slice of a matrix
``[concepts, cfg modes, sites, d_model]`` (``add_matrix``). Which rows of a batch a concept
steers (its CFG mode) is then folded in once per batch layout (``fold_rows``): a sum over
the modes of the matrix times each mode's row mask. An offset is the knobs times the
folded matrix. ``Steerer`` folds for its batch (the hooks and the decode loop's inline
offsets); ``StaticStream`` folds for one conditional and one unconditional row and takes
one product per stream. Both build the matrix and fold it here, so they steer with the
same bits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from steering_core.steer.vectors import CFG_MODES


@dataclass(frozen=True)
class AddTerm:
    """One plain-add concept at one site: its direction scaled by the layer's gain."""

    slot: int  # the concept's row in the knob table
    cfg_mode: str
    site: int  # index into the sites being folded
    direction: torch.Tensor  # [d_model], already on the model's device and dtype
    gain: float


def add_matrix(terms: Iterable[AddTerm], concepts: int, sites: int, d_model: int,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every term's ``direction * gain`` in its slot: [concepts, cfg modes, sites, d_model]."""
    matrix = torch.zeros(concepts, len(CFG_MODES), sites, d_model, device=device, dtype=dtype)
    for term in terms:
        matrix[term.slot, CFG_MODES.index(term.cfg_mode), term.site] += term.direction * term.gain
    return matrix


def cfg_row_masks(batch: int, cfg_batch: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[cfg modes, batch]: 1 where a concept of that mode steers the row. In a CFG batch the
    conditional rows come first; without one every row is conditional."""
    rows = torch.arange(batch, device=device)
    cond = rows < batch // 2 if cfg_batch else torch.ones(batch, dtype=torch.bool, device=device)
    by_mode = {"both": torch.ones_like(cond), "cond": cond, "uncond": ~cond if cfg_batch else torch.zeros_like(cond)}
    return torch.stack([by_mode[mode] for mode in CFG_MODES]).to(dtype)


def fold_rows(matrix: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[concepts, modes, sites, d] folded with row masks [modes, batch]: [concepts, sites, batch, d]."""
    return (matrix[:, :, :, None, :] * masks[None, :, None, :, None]).sum(dim=1)
