"""The decoder, called by the streams themselves: the prefill both streams share, and the
weights the static step's own one-position layer step reads.

``prefill_logits`` runs transformers' own decoder layers over new positions (a whole
window on a re-prime, one position per step in ``MusicStream``), so every steering hook
fires exactly as in ``MusicgenForCausalLM``; the one thing a stream varies is where the
per-layer steering offsets come from (the ``Steerer``'s shared ones, or a static step's
per-row table). ``LayerWeights`` is one layer's weights for the static step, which calls
``F.linear`` and ``F.layer_norm`` on them directly: the same ops as the modules' forwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

from steering_core.model.loading import MusicGenHandle

#: What to add to each decoder layer's output ([rows, 1, d_model]), None for nothing.
LayerOffsets = Sequence[torch.Tensor | None]
#: Called with each decoder layer's index and its steered output; reads it, changes nothing
#: (``probe_tap.ProbeTaps``).
LayerTap = Callable[[int, torch.Tensor], None]

#: What a decoder layer calls its KV cache: ``cache`` in the transformers releases that renamed it
#: (they warn, FutureWarning, on each call that still says ``past_key_values``), the old name
#: before them (pyproject's floor).
CACHE_KWARG = "cache" if "cache" in inspect.signature(MusicgenDecoderLayer.forward).parameters else "past_key_values"


def decoder_parts(handle: MusicGenHandle) -> tuple[Any, Any]:
    """transformers' ``MusicgenDecoder`` and the LM heads (untyped modules, read by attribute)."""
    model: Any = handle.model
    return model.decoder.model.decoder, model.decoder.lm_heads


def prefill_logits(decoder: Any, lm_heads: Any, input_ids: torch.Tensor, cache: EncoderDecoderCache,
                   encoder_states: torch.Tensor, cross_mask: torch.Tensor | None,
                   offsets: LayerOffsets | None, taps: LayerTap | None = None) -> torch.Tensor:
    """The decoder over new positions ``input_ids`` [rows * K, n] -> last-position logits [rows, K, V].

    The same modules and weights as transformers' MusicgenForCausalLM, called layer by
    layer, minus what a streaming step does not need: the per-call mask building
    (self-attention is either one query over the whole cache, or causal from an empty
    cache; the cross-attention mask changes only with the prompt), output bookkeeping,
    and the LM heads at every position but the last.
    """
    books = len(decoder.embed_tokens)
    ids = input_ids.reshape(-1, books, input_ids.shape[-1])
    n = ids.shape[-1]
    past = cache.get_seq_length()
    hidden: torch.Tensor = sum(decoder.embed_tokens[k](ids[:, k]) for k in range(books))
    positions = decoder.embed_positions
    if past + n > positions.weights.shape[0]:
        positions.make_weights(past + n, positions.embedding_dim)
    hidden = hidden + positions.weights[past:past + n].to(hidden.dtype)
    for i, layer in enumerate(decoder.layers):
        hidden = layer(hidden, None, encoder_states, encoder_attention_mask=cross_mask, use_cache=True,
                       **{CACHE_KWARG: cache})
        if offsets is not None and (offset := offsets[i]) is not None:
            hidden = hidden + offset
        if taps is not None:
            taps(i, hidden)
    last = decoder.layer_norm(hidden[:, -1:])
    return torch.stack([head(last[:, 0]) for head in lm_heads], dim=1)


class LayerNorm:
    """``nn.LayerNorm``'s forward without the module call (3 a layer, each a few µs)."""

    def __init__(self, norm: Any) -> None:
        self.shape = tuple(norm.normalized_shape)
        self.weight: torch.Tensor = norm.weight
        self.bias: torch.Tensor = norm.bias
        self.eps: float = norm.eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class Linear:
    """``nn.Linear``'s forward without the module call (8 a layer, each a few µs)."""

    def __init__(self, linear: Any) -> None:
        self.weight: torch.Tensor = linear.weight
        self.bias: torch.Tensor | None = linear.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerWeights:
    """One decoder layer's weights, read once, for a step that calls ``F.linear`` and
    ``F.layer_norm`` on them directly: the same ops as the modules' forwards, so the same
    bits. On a small model on a CPU the module calls were about a tenth of the step."""

    def __init__(self, layer: Any) -> None:
        sa, ea = layer.self_attn, layer.encoder_attn
        self.q, self.k, self.v, self.o = Linear(sa.q_proj), Linear(sa.k_proj), Linear(sa.v_proj), Linear(sa.out_proj)
        self.cross_q, self.cross_o = Linear(ea.q_proj), Linear(ea.out_proj)
        self.cross_k_proj, self.cross_v_proj = Linear(ea.k_proj), Linear(ea.v_proj)
        self.fc1, self.fc2 = Linear(layer.fc1), Linear(layer.fc2)
        self.self_norm = LayerNorm(layer.self_attn_layer_norm)
        self.cross_norm = LayerNorm(layer.encoder_attn_layer_norm)
        self.final_norm = LayerNorm(layer.final_layer_norm)
        self.activation: Any = layer.activation_fn
        self.self_scaling: float = sa.scaling
        self.cross_scaling: float = ea.scaling
