"""Endless, steerable MusicGen decoding, one frame at a time.

``MusicStream`` is steerbridge's own decode loop (not a wrapper around ``generate()``):

* the text encoder runs once per prompt; its states feed a cross-attention cache
  that is computed once and rebuilt only when the prompt changes;
* conditional and unconditional rows run as one CFG batch (conditional first);
* the self-attention KV cache grows by one position per step and can be cropped,
  which is how unplayed lookahead is rolled back when a knob moves;
* the delay pattern: codebook k runs d(k) frames behind codebook 0, so one step emits
  codebook 0 of frame f, codebook 1 of frame f-1, ... A frame is *complete* once its
  last codebook is out. d(k) = k for mono models; stereo models interleave left and
  right codebooks of each level, so d(k) = k // 2 (as transformers' delay pattern);
* past the model's trained window it re-primes: the cache is rebuilt from the last
  ``reprime_frames`` complete frames, laid out exactly as MusicGen saw prompts in
  training, and decoding carries on with no gap in the token stream.

Tokens live in ``codes`` [B, K, T] in real frame time (no delay), so everything
downstream (codec, recording, analysis) sees plain frames.

Position/frame bookkeeping: the window starts at frame ``w0``; input position ``p``
holds, for codebook k, frame ``w0 + p - 1 - d(k)`` (BOS where that is before the
window); the logits at position ``p`` predict frame ``w0 + p - d(k)`` of codebook k.

The pieces a stream is made of, shared with ``StaticStream`` (which subclasses this):
the prefill (``layers.prefill_logits``, transformers' layers over new positions), the
sampler (``sampling``), the fold of steering offsets (``steer.fold``, through the
``Steerer``), and the bookkeeping of this class: positions, filled frames, re-prime,
and rollback with its RNG history. A subclass varies only what its K/V store and its
steering tables need, through four hooks: ``_layer_offsets`` (where the prefill's
per-layer offsets come from), ``_truncate_kv`` (drop the K/V past a kept position),
``_sync_tokens`` (bring ``codes`` up to date before the bookkeeping moves) and
``_window_primed`` (after a re-prime's prefill).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TypedDict

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask

from steering_core.errors import UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.stream.layers import LayerOffsets, LayerTap, decoder_parts, prefill_logits
from steering_core.stream.sampling import SamplingSettings, guide, sample

#: Called before each decode step with the index of the codebook-0 frame it will produce.
FrameCallback = Callable[[int], None]


class StreamOptions(TypedDict, total=False):
    """The keyword options every stream takes, with ``MusicStream``'s defaults (a
    ``StaticStream`` and ``open_stream`` pass them on as they are)."""

    seed: int
    settings: SamplingSettings | None
    steerer: Steerer | None
    window_frames: int | None
    reprime_frames: int | None
    rollback_depth: int


class MusicStream:
    #: Read every layer's steered output each step (``probe_tap.ProbeTaps``); set before the first step.
    taps: LayerTap | None = None

    def __init__(
        self,
        handle: MusicGenHandle,
        prompts: Sequence[str] | str,
        *,
        seed: int = 0,
        settings: SamplingSettings | None = None,
        steerer: Steerer | None = None,
        window_frames: int | None = None,
        reprime_frames: int | None = None,
        rollback_depth: int = 512,
    ) -> None:
        self.handle = handle
        self.settings = settings or SamplingSettings(
            top_k=int(handle.generation_config.top_k or 250),
            guidance_scale=float(handle.generation_config.guidance_scale or 3.0))
        self.settings.validate()
        self.steerer = steerer
        self.window_frames = window_frames or handle.window_frames
        self.reprime_frames = reprime_frames or self.window_frames // 2
        if not 0 < self.reprime_frames < self.window_frames - handle.num_codebooks:
            raise UserError("reprime_frames must be positive and well inside the window")
        self.num_codebooks = handle.num_codebooks
        self.bos = handle.pad_token_id
        self.device = handle.device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.batch = len(self.prompts)
        self._decoder, self._lm_heads = decoder_parts(handle)
        self._encode(self.prompts)
        self.codes = torch.full((self.batch, self.num_codebooks, 1024), self.bos,
                                dtype=torch.long, device=self.device)
        self.filled = [0] * self.num_codebooks  # frames known, per codebook
        self.w0 = 0
        self.pos = 0
        self._codebooks = torch.arange(self.num_codebooks, device=self.device)
        self.delays = [k // handle.audio_channels for k in range(self.num_codebooks)]
        self._delays = torch.tensor(self.delays, device=self.device)
        #: Steps from a codebook-0 token to its frame being complete.
        self.max_delay = max(self.delays)
        self._next_ids: torch.Tensor | None = None  # the next single step's input, when known
        self.cache = self._new_cache()
        self.reprimes = 0
        # RNG state before each step, so a rollback regenerates exactly what a
        # replay that applied the same change at the same frame would.
        self._rng_history: deque[tuple[int, torch.Tensor]] = deque(maxlen=rollback_depth)

    # --- public ---------------------------------------------------------------------
    @property
    def frames_complete(self) -> int:
        return min(self.filled)

    @property
    def next_frame(self) -> int:
        """The codebook-0 frame the next step produces."""
        return self.w0 + self.pos

    @property
    def steps_until_reprime(self) -> int:
        """Normal steps left in this window; 0: the next step re-primes."""
        return max(0, self.window_frames - self.pos)

    @torch.inference_mode()
    def measure_reprime(self) -> float:
        """Seconds a re-prime's prefill takes here, timed on a scratch cache (the stream's
        tokens, cache and RNG are untouched), so a player can buffer ahead of one."""
        saved = self.cache
        self.cache = self._new_cache()
        ids = torch.full((2 * self.batch * self.num_codebooks, self.reprime_frames + self.max_delay + 1), self.bos,
                         dtype=torch.long, device=self.device)
        try:
            self._sync()
            start = time.perf_counter()
            self._decoder_logits(ids)
            self._sync()
            return time.perf_counter() - start
        finally:
            self.cache = saved

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def set_prompt(self, prompts: Sequence[str] | str) -> None:
        """New text from the next frame on: new encoder states, new cross-attention cache;
        the self-attention cache (the music so far) is kept."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != self.batch:
            raise ValueError(f"expected {self.batch} prompt(s), got {len(prompts)}")
        self.prompts = prompts
        self._encode(prompts)
        # A fresh cross-attention cache, not reset(): what reset() keeps differs between
        # transformers releases (5.4 zeroes the old keys in place and attends over them).
        self.cache = EncoderDecoderCache(self.cache.self_attention_cache, DynamicCache())

    def steering(self) -> AbstractContextManager[object]:
        """The stream's steerer installed for this loop (a no-op without one).

        The plain ``add`` offsets on the residual stream are added by ``_decoder_logits``
        itself rather than by a hook per layer; everything else is hooked as usual. Use
        this rather than ``steerer.installed()`` around a stream: same tokens, less overhead.
        """
        return self.steerer.installed(resid_inline=True) if self.steerer is not None else nullcontext()

    @torch.inference_mode()
    def step(self) -> None:
        """Generate one step: one new codebook-0 token per row (and the delayed others)."""
        if self.pos >= self.window_frames:
            self._reprime()
        else:
            self._remember_rng()
            ids = self._next_ids if self._next_ids is not None else self._inputs(self.pos, self.pos + 1)
            self._forward_and_sample(ids)

    def generate_frames(self, n: int, on_frame: FrameCallback | None = None) -> torch.Tensor:
        """Step until ``n`` more frames are complete; returns them as [B, K, n]."""
        start = self.frames_complete
        while self.frames_complete < start + n:
            if on_frame is not None:
                on_frame(self.next_frame)
            self.step()
        return self.codes[:, :, start:start + n]

    def rollback(self, step: int) -> int:
        """Forget every token produced by steps ``step`` onwards, so those steps run again
        under the current controls. Step ``s`` is the one that produced codebook-0 frame
        ``s`` (and codebook k of frame ``s - d(k)``), so frames from ``step - max_delay``
        on become incomplete. Returns the step actually rolled back to: never into the current
        window's prefix, nor further back than the RNG history reaches."""
        self._sync_tokens()
        step = max(step, self.w0 + 1, self._oldest_rollback_step())
        if step >= self.next_frame:
            return self.next_frame
        keep = step - self.w0  # input positions whose steps stay
        self._truncate_kv(keep)
        self.pos = keep
        self._next_ids = None
        self.filled = [min(f, max(0, step - d)) for d, f in zip(self.delays, self.filled, strict=True)]
        while self._rng_history and self._rng_history[-1][0] >= step:
            at, state = self._rng_history.pop()
            if at == step:
                self.generator.set_state(state)
        return step

    # --- what a subclass with another K/V store varies ------------------------------------
    def _truncate_kv(self, keep: int) -> None:
        """Forget the self-attention K/V past the first ``keep`` positions (``pos`` is still the old one)."""
        # A negative crop removes that many positions (the form every transformers version accepts).
        self.cache.self_attention_cache.crop(keep - self.pos)

    def _layer_offsets(self, rows: int) -> LayerOffsets | None:
        """The prefill's per-layer steering offsets: the steerer's inline ones, when installed so."""
        steerer = self.steerer
        return steerer.layer_offsets(rows) if steerer is not None and steerer.resid_inline else None

    def _sync_tokens(self) -> None:
        """Bring ``codes`` up to date before a rollback or re-prime moves the bookkeeping
        (here they always are)."""

    def _window_primed(self, tokens: torch.Tensor) -> None:
        """After a re-prime's prefill, whose last step made ``tokens`` [B, K] (nothing to do here)."""

    # --- internals ------------------------------------------------------------------
    def _remember_rng(self) -> None:
        """The RNG state before the step that makes ``next_frame``, for a rollback to it."""
        self._rng_history.append((self.next_frame, self.generator.get_state()))

    def _oldest_rollback_step(self) -> int:
        return self._rng_history[0][0] if self._rng_history else self.next_frame

    def _new_cache(self) -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def _encode(self, prompts: list[str]) -> None:
        self._encoded(*self.handle.encode_text(prompts))

    def _encoded(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """The prompts' encoder states [B, L, d] and mask [B, L] in place for the decoder."""
        # Unconditional rows: zero states, fully masked, as transformers' generate() does.
        self.encoder_states = torch.cat([states, torch.zeros_like(states)])
        self.encoder_mask = torch.cat([mask, torch.zeros_like(mask)])
        # The cross-attention mask in the attention kernel's own form, built once per
        # prompt by transformers' own function (fully masked rows included).
        self._cross_mask = create_bidirectional_mask(
            config=self._decoder.config, inputs_embeds=self.encoder_states[:, :1], attention_mask=self.encoder_mask,
            encoder_hidden_states=self.encoder_states)

    def _inputs(self, start: int, stop: int) -> torch.Tensor:
        """Decoder inputs for positions [start, stop): [2B * K, stop - start]."""
        k = self._delays[:, None]
        p = torch.arange(start, stop, device=self.device)[None, :]
        frame = self.w0 + p - 1 - k  # [K, n]
        valid = (p - 1 - k) >= 0
        gathered = self.codes.gather(2, frame.clamp_min(0).expand(self.batch, -1, -1))
        ids = torch.where(valid, gathered, torch.full_like(gathered, self.bos))
        return torch.cat([ids, ids]).reshape(2 * self.batch * self.num_codebooks, stop - start)

    def _decoder_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The decoder over new positions [2B * K, n] -> last-position logits [2B, K, V]."""
        return prefill_logits(self._decoder, self._lm_heads, input_ids, self.cache, self.encoder_states,
                              self._cross_mask, self._layer_offsets(input_ids.shape[0] // self.num_codebooks),
                              self.taps)

    def _forward_and_sample(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decode ``input_ids``, sample the last position's tokens, write them; returns them [B, K]."""
        use_cfg = self.settings.uses_cfg
        logits = self._decoder_logits(input_ids)
        logits = guide(logits, self.settings.guidance_scale) if use_cfg else logits[: self.batch]
        tokens = sample(logits, self.settings, self.generator)  # [B, K]
        self.pos += input_ids.shape[1]
        self._write(tokens)
        return tokens

    def _write(self, tokens: torch.Tensor) -> None:
        last = self.w0 + self.pos - 1  # the position just consumed predicts frame last - d(k)
        self._ensure_capacity(last + 1)
        d = self.delays
        fresh = [k for k in range(self.num_codebooks) if last - d[k] >= max(0, self.filled[k])]
        if len(fresh) == self.num_codebooks:  # the steady state: one write for all codebooks
            self.codes[:, self._codebooks, last - self._delays] = tokens
            # ...and the next step's input is exactly these tokens (position p holds frame
            # p - 1 - d(k) of codebook k), so it needs no gather.
            self._next_ids = torch.cat([tokens, tokens]).reshape(-1, 1)
        else:  # the stream's start, or steps after a rollback that re-make kept frames
            for k in fresh:
                self.codes[:, k, last - d[k]] = tokens[:, k]
            self._next_ids = None
        for k in fresh:
            self.filled[k] = last - d[k] + 1

    def _ensure_capacity(self, frames: int) -> None:
        if frames <= self.codes.shape[2]:
            return
        grown = torch.full((self.batch, self.num_codebooks, 2 * frames), self.bos,
                           dtype=torch.long, device=self.device)
        grown[:, :, : self.codes.shape[2]] = self.codes
        self.codes = grown

    def _reprime(self) -> None:
        """Start a fresh window on the last ``reprime_frames`` complete frames.

        The new window's prefix is the complete frames laid out with MusicGen's
        BOS staircase; its last input position holds the newest token of every
        codebook, so the step that follows continues the stream with no gap.
        """
        self._sync_tokens()
        newest = self.w0 + self.pos - 1  # newest codebook-0 frame
        self.w0 = self.frames_complete - self.reprime_frames
        positions = newest - self.w0 + 2
        self.pos = 0
        self.cache = self._new_cache()
        self._rng_history.clear()  # no rollback across a window change
        self.reprimes += 1
        self._window_primed(self._forward_and_sample(self._inputs(0, positions)))
        # The re-prime itself cannot be redone alone; the first step after it can.
        self._remember_rng()
