"""Injection operators: how a direction ``v`` (unit length) changes an activation ``h``.

Each is a plain function ``(h, v, alpha) -> h'`` over the last dimension, so a new
operator is one more function in ``OPERATORS``. ``alpha`` is a 0-d tensor, so a knob
can change it in place between frames without re-registering anything.

With ``alpha == 0`` every operator but ``clamp`` returns ``h`` exactly, bit for bit:
that is what makes "knob at zero" the same as "no steering at all".
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Operator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _proj(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """<h, v> per position, kept as a trailing singleton for broadcasting."""
    return (h * v).sum(dim=-1, keepdim=True)


def add(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h + α·v (Facchiano et al.; TADA's contrastive activation addition)."""
    return h + alpha * v


def add_norm_scaled(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h + α·‖h‖·v: the push is relative to the activation's own size."""
    return h + alpha * h.norm(dim=-1, keepdim=True) * v


def mix(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(h + α·‖h‖·v) / (1 + α): Panda et al.'s norm-preserving mix, as in their code."""
    return (h + alpha * h.norm(dim=-1, keepdim=True) * v) / (1 + alpha)


def renorm(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h + α·v, rescaled back to ‖h‖: direction changes, loudness of the stream does not."""
    moved = h + alpha * v
    scale = h.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return moved * scale


def ablate(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h − α·<h,v>·v: α = 1 removes the v component entirely."""
    return h - alpha * _proj(h, v) * v


def steer_back(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h − β·relu(<h,v>)·v (TADA's removal operator): only pushes back what points along v."""
    return h - alpha * torch.relu(_proj(h, v)) * v


def clamp(h: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Set <h,v> to α: the knob is the target projection itself."""
    return h + (alpha - _proj(h, v)) * v


OPERATORS: dict[str, Operator] = {
    "add": add,
    "add_norm_scaled": add_norm_scaled,
    "mix": mix,
    "renorm": renorm,
    "ablate": ablate,
    "steer_back": steer_back,
    "clamp": clamp,
}


def get_operator(name: str) -> Operator:
    try:
        return OPERATORS[name]
    except KeyError:
        raise ValueError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}") from None
