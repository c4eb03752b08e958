"""Injection operators: how a direction ``v`` (unit length) changes an activation ``h``.

Each is a plain function ``(h, v, a) -> h'`` over the last dimension, so a new
operator is one more function in ``OPERATORS``. ``v`` is always unit length; ``a`` is
the strength, a 0-d tensor: the knob's alpha times the vector's gain at that layer
(the algebra ``fast * 0.5`` or ``a + b`` keeps rows unit length and moves magnitude into
the gain). So a gain of 2 acts exactly as the same knob turned twice as far, for every
operator: ``add`` moves by ``a``, ``ablate`` at ``a = 1`` removes the component, ``clamp``
sets the projection to ``a``. The steerer computes ``a``; an operator never sees a gain.

With ``a == 0`` every operator but ``clamp`` returns ``h`` exactly, bit for bit:
that is what makes "knob at zero" the same as "no steering at all".
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from steering_core.errors import UserError

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
    """(h + α·‖h‖·v) / (1 + |α|): Panda et al.'s norm-preserving mix. They define it for
    α ≥ 0, where this is their (h + α‖h‖v)/(1 + α); for α < 0 their denominator reaches
    zero at α = −1 and flips sign past it, so the mix divides by 1 + |α|: the result
    never grows past ‖h‖ and the knob's whole range is safe."""
    return (h + alpha * h.norm(dim=-1, keepdim=True) * v) / (1 + alpha.abs())


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
        raise UserError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}") from None
