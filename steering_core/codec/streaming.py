"""Codes -> audio with the model's own EnCodec, in one shot or in streaming chunks.

EnCodec's decoder is non-causal (its convolutions look ahead) and has LSTMs (they look
back), so a chunk decoded alone is wrong at both edges. ``ChunkedDecoder`` decodes each
chunk with ``context_frames`` of already-played frames on the left, holds back
``holdback_frames`` on the right until their future is known, and crossfades the
first ``crossfade_frames`` of each chunk into the tentative tail of the previous one.

How much of each a codec needs is the codec's own property (its receptive field), so a
model may declare it in its config under ``steerbridge_codec_streaming`` (the toy does);
``CodecStreaming()`` is the default, measured for MusicGen's EnCodec 32 kHz with
benchmarks/chunked_snr.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from steering_core.codec.encodec_walk import decode_codes
from steering_core.errors import UserError

if TYPE_CHECKING:
    from steering_core.model.loading import MusicGenHandle


@torch.inference_mode()
def decode(handle: MusicGenHandle, codes: torch.Tensor) -> np.ndarray:
    """codes [B, K, T] -> float32 audio [B, channels, T * hop]."""
    codec = handle.model.audio_encoder
    if handle.audio_channels == 2:  # stereo models interleave left/right codebooks
        left = decode_codes(codec, codes[:, ::2])
        right = decode_codes(codec, codes[:, 1::2])
        audio = torch.cat([left, right], dim=1)
    else:
        audio = decode_codes(codec, codes)
    return audio.float().cpu().numpy()


#: The key in a model's config under which it declares its own ``CodecStreaming``.
STREAMING_CONFIG_KEY = "steerbridge_codec_streaming"


@dataclass(frozen=True)
class CodecStreaming:
    """How live audio is decoded: ``chunk_frames`` per decode call, each with
    ``context_frames`` of left context and ``holdback_frames`` held until their right
    context exists. Bigger chunks cost fewer calls (a decode's fixed cost dominates small
    codecs on a CPU) and add ``chunk_frames`` frames of knob-to-sound latency."""

    chunk_frames: int = 1
    context_frames: int = 16
    holdback_frames: int = 6
    crossfade_frames: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"codec streaming: {f.name} must be a whole number >= 0, not {value!r}")
        if self.chunk_frames < 1:
            raise UserError("codec streaming: chunk_frames must be at least 1")
        if self.crossfade_frames > self.holdback_frames:
            raise UserError("codec streaming: crossfade_frames must fit inside holdback_frames")

    @classmethod
    def for_model(cls, handle: MusicGenHandle) -> CodecStreaming:
        """The model's declared settings, else the default."""
        declared: Any = getattr(handle.model.config, STREAMING_CONFIG_KEY, None)
        if declared is None:
            return cls()
        if not isinstance(declared, dict) or set(declared) - {f.name for f in fields(cls)}:
            raise UserError(f"{handle.model_id}: {STREAMING_CONFIG_KEY} in its config must map "
                             f"{[f.name for f in fields(cls)]} to whole numbers, not {declared!r}")
        return cls(**declared)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ChunkedDecoder:
    """Feed complete frames in, take audio out; the joined output tracks a one-shot decode."""

    def __init__(self, handle: MusicGenHandle, *, context_frames: int = 50, holdback_frames: int = 6,
                 crossfade_frames: int = 3, chunk_frames: int = 1) -> None:
        if crossfade_frames > holdback_frames:
            raise ValueError("crossfade_frames must fit inside holdback_frames")
        self.handle = handle
        self.chunk = chunk_frames  # what the caller should push between pulls; pull works with any
        self.hop = handle.hop_length
        self.context = context_frames
        self.holdback = holdback_frames
        self.crossfade = crossfade_frames
        self.codes: torch.Tensor | None = None  # [B, K, T] frames pushed, from frame `base` on
        self.base = 0  # frames before this were dropped: they are further back than any context
        self.emitted_frames = 0
        self._tentative: np.ndarray | None = None  # previous chunk's decode of the next crossfade region
        n = crossfade_frames * self.hop
        self._fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)

    @property
    def frames_per_pull(self) -> int:
        """Frames pushed past the last emitted one before a pull yields a whole chunk."""
        return self.chunk + self.holdback

    @classmethod
    def streaming(cls, handle: MusicGenHandle, settings: CodecStreaming | None = None) -> ChunkedDecoder:
        """A decoder with ``settings``, by default the model's own (``CodecStreaming.for_model``)."""
        s = settings or CodecStreaming.for_model(handle)
        return cls(handle, context_frames=s.context_frames, holdback_frames=s.holdback_frames,
                   crossfade_frames=s.crossfade_frames, chunk_frames=s.chunk_frames)

    def push(self, frames: torch.Tensor) -> None:
        self.codes = frames if self.codes is None else torch.cat([self.codes, frames], dim=2)

    def rewind(self, frame: int) -> None:
        """Drop pushed frames from ``frame`` on (the engine rolled them back). Frames
        already emitted stay emitted; the next chunk crossfades out of the tentative
        tail decoded from the old frames, so the change lands without a click."""
        if self.codes is not None:
            self.codes = self.codes[:, :, : max(frame, self.emitted_frames) - self.base]

    def pull(self, final: bool = False) -> np.ndarray:
        """Audio for every frame that can be finalised now: [B, C, n]. With ``final``,
        flush everything (end of stream)."""
        if self.codes is None:
            return np.zeros((1, self.handle.audio_channels, 0), np.float32)
        total = self.base + self.codes.shape[2]
        stop = total if final else total - self.holdback
        if stop <= self.emitted_frames:
            return np.zeros((self.codes.shape[0], self.handle.audio_channels, 0), np.float32)
        left = max(0, self.emitted_frames - self.context)
        audio = decode(self.handle, self.codes[:, :, left - self.base:])
        offset = (self.emitted_frames - left) * self.hop
        out = audio[..., offset: offset + (stop - self.emitted_frames) * self.hop].copy()
        if self._tentative is not None:
            n = min(self._tentative.shape[-1], out.shape[-1])
            fade = self._fade_in[:n]
            out[..., :n] = self._tentative[..., :n] * (1 - fade) + out[..., :n] * fade
        tail_end = offset + (stop - self.emitted_frames + self.crossfade) * self.hop
        self._tentative = None if final else audio[..., offset + out.shape[-1]: tail_end].copy()
        self.emitted_frames = stop
        # Keep only what the next chunk's left context can reach (a set can last hours).
        drop = max(0, stop - self.context) - self.base
        if drop > 0:
            self.codes = self.codes[:, :, drop:].clone()
            self.base += drop
        return out
