"""Where in a MusicGen decoder layer a steering vector is read or written.

=================  ==========================================================
site               what it is
=================  ==========================================================
``resid_post``     the decoder layer's output (the residual stream after it)
``attn_out``       self-attention output, before it is added to the residual
``cross_attn_out`` cross-attention (text) output, before the residual add
``mlp_out``        the feed-forward output (``fc2``), before the residual add
``head``           the per-head input of self-attention's ``out_proj``
=================  ==========================================================

Every site is a module plus "its output" or "its input", so one pair of helpers
reads and replaces the tensor whether transformers hands it over bare or in a tuple.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steering_core.errors import UserError

SITES: tuple[str, ...] = ("resid_post", "attn_out", "cross_attn_out", "mlp_out", "head")
Site = Literal["resid_post", "attn_out", "cross_attn_out", "mlp_out", "head"]

#: A function that sees a site's activation [batch, time, d_model] and returns it, changed or not.
Edit = Callable[[torch.Tensor], torch.Tensor]


class SiteError(UserError):
    """A site that does not exist, or that this model's layers do not have."""


@dataclass(frozen=True)
class SitePoint:
    module: nn.Module
    reads_input: bool  # True: the hook edits the module's input (``head``); else its output


def site_point(layer: Any, site: str) -> SitePoint:
    """The module and side (input or output) that stands for ``site`` in one decoder layer (a
    MusicgenDecoderLayer: its sub-modules are attributes torch types only as ``Tensor | Module``)."""
    if site == "resid_post":
        return SitePoint(layer, reads_input=False)
    if site == "attn_out":
        return SitePoint(layer.self_attn, reads_input=False)
    if site == "cross_attn_out":
        if not hasattr(layer, "encoder_attn"):
            raise SiteError("cross_attn_out: this model's decoder has no cross-attention (MusicGen-Melody?)")
        return SitePoint(layer.encoder_attn, reads_input=False)
    if site == "mlp_out":
        return SitePoint(layer.fc2, reads_input=False)
    if site == "head":
        return SitePoint(layer.self_attn.out_proj, reads_input=True)
    raise SiteError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")


def _first_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value[0]


def _with_first_tensor(value: Any, tensor: torch.Tensor) -> Any:
    """Put ``tensor`` where ``_first_tensor`` found it; transformers versions return a
    tensor or a tuple from the same module."""
    if isinstance(value, torch.Tensor):
        return tensor
    return (tensor, *value[1:])


def attach(layer: nn.Module, site: str, edit: Edit) -> RemovableHandle:
    """Install ``edit`` at ``site`` of ``layer``; the caller owns the returned handle."""
    point = site_point(layer, site)
    if point.reads_input:
        def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (edit(args[0]), *args[1:])

        return point.module.register_forward_pre_hook(pre_hook)

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        return _with_first_tensor(output, edit(_first_tensor(output)))

    return point.module.register_forward_hook(hook)
