"""EnCodec's decoder, run layer by layer with its padding worked out in Python ints.

transformers' ``EncodecConv1d`` keeps its kernel size and stride as tensors and works out
each call's padding with half a dozen tensor ops and tensor-to-int conversions. On a GPU
or a big codec that is nothing; on a small codec on a CPU, decoding a few frames at a
time as ``serve`` does, it was a third of the decode (the toy: 4.9 -> 3.3 ms for a
12-frame chunk). This walks the same modules and calls the same convolutions, LSTM and
activations in the same order, with the same padding, so the samples are the same bit
for bit (``tests/test_codec.py`` checks it against ``EncodecModel.decode``).

A codec this does not know how to walk (chunked EnCodec with overlap-add, a layer type
it has not seen) goes through ``EncodecModel.decode`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.encodec import modeling_encodec as encodec

_PLAIN_LAYERS = (encodec.EncodecConvTranspose1d, encodec.EncodecLSTM, nn.ELU, nn.Identity)


def can_walk(codec: Any) -> bool:
    """Whether ``decode_codes`` can run this codec's decoder itself."""
    config = getattr(codec, "config", None)
    if config is None or getattr(config, "chunk_length", None) is not None:
        return False
    decoder = getattr(codec, "decoder", None)
    return decoder is not None and all(_known(layer) for layer in decoder.layers)


def _known(layer: nn.Module) -> bool:
    if isinstance(layer, encodec.EncodecResnetBlock):
        return all(_known(sub) for sub in layer.block) and _known(layer.shortcut)
    return isinstance(layer, (encodec.EncodecConv1d, *_PLAIN_LAYERS))


def decode_codes(codec: Any, codes: torch.Tensor) -> torch.Tensor:
    """codes [B, K, T] -> audio [B, channels, T * hop], as ``codec.decode(codes[None],
    [None]).audio_values``."""
    if not can_walk(codec):
        return codec.decode(codes[None], [None]).audio_values
    hidden = codec.quantizer.decode(codes.transpose(0, 1))
    for layer in codec.decoder.layers:
        hidden = _run(layer, hidden)
    return hidden


def _run(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, encodec.EncodecConv1d):
        return _conv1d(layer, hidden)
    if isinstance(layer, encodec.EncodecResnetBlock):
        residual = hidden
        for sub in layer.block:
            hidden = _run(sub, hidden)
        return _run(layer.shortcut, residual) + hidden
    return layer(hidden)


def _conv1d(layer: encodec.EncodecConv1d, hidden: torch.Tensor) -> torch.Tensor:
    """``EncodecConv1d.forward`` with ints: pad (reflect or zero, split as EnCodec splits
    it, plus the extra right padding that makes the last window whole), convolve, norm."""
    conv = layer.conv
    kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
    stride = conv.stride[0]
    padding_total = kernel - stride
    length = hidden.shape[-1]
    frames = -(-(length - kernel + padding_total) // stride)  # ceil((...) / stride + 1) - 1
    extra = frames * stride + kernel - padding_total - length
    if layer.causal:
        paddings = (padding_total, extra)
    else:
        right = padding_total // 2
        paddings = (padding_total - right, right + extra)
    hidden = encodec.EncodecConv1d._pad1d(hidden, paddings, mode=layer.pad_mode)
    hidden = conv(hidden)
    if layer.norm_type == "time_group_norm":
        hidden = layer.norm(hidden)
    return hidden


__all__ = ["can_walk", "decode_codes"]
