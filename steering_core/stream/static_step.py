"""A static, graph-capturable decode step: ``StaticStream``.

``MusicStream`` grows a ``DynamicCache``, crops it on rollback and samples with host-side
bookkeeping; none of that can be captured in a CUDA graph. ``StaticStream`` is the same
stream (it subclasses it: the same prefill, re-prime, rollback bookkeeping, RNG history
and prompt handling) with its own K/V store and a steady-state step that is one function
over fixed buffers:

* self-attention K/V preallocated for the whole window plus the delay,
  ``[layers, 2B, heads, window + max_delay + 1, head_dim]``; a step writes its K/V at the
  position and attends to every slot with a mask ``slot <= position``; a rollback only
  moves the position back (``_truncate_kv``), and later steps overwrite the slots;
* cross-attention K/V computed once per prompt into fixed buffers (padded and masked
  to the longest prompt seen, so a new prompt is a copy, not a new shape);
* the position is a 0-d device tensor, the step's input is gathered on the device from
  the previous step's tokens (BOS where the delay pattern says so), and the new tokens
  are written into a device-side buffer ``[B, K, cache length]``; the host copies them
  into ``codes`` only when someone reads ``codes``;
* embeddings, layers (transformers' own layer norms, projections, fc1/fc2, read once by
  ``layers.LayerWeights``), per-stream steering offsets, LM heads and the sampler's graph
  form (``sampling.draw_every_stage``: settings as tensors, the noise drawn by the host
  before the step) all happen on the device, with no host synchronisation and no Python
  branch on a tensor's value. An eager step samples with ``sampling.draw_cfg`` instead,
  which skips the stages the settings switch off: the same tokens.

Re-prime is the shared prefill through transformers' layers on a ``DynamicCache``; its
K/V are then copied into the static slots (``_window_primed``).

Steering: concepts must be plain ``add`` at ``resid_post`` (the fused, inline case of
``Steerer``). The knobs are the steerer's per-stream table (``Steerer.stream_knobs``,
``[streams, concepts]`` float32, cast to the model dtype at use), so each row of a batch
has its own alphas and enables, and ``Steerer.set_alpha(name, value, stream=i)`` turns
one row's knob. The directions come folded from ``steer.fold`` (through
``Steerer.add_matrix``), for one conditional and one unconditional row.

CUDA graphs (``cuda_graphs="auto"|"on"|"off"``, see ``graphs.StepGraph``): after the first
step of a window the step is captured once, checked against eager steps, and replayed.

Threading: as ``MusicStream``; knob writes go through the steerer (see its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Unpack

import torch
import torch.nn.functional as F

from steering_core.errors import UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.fold import cfg_row_masks, fold_rows
from steering_core.steer.knobs import MAX_CONCEPTS
from steering_core.steer.steerer import Steerer
from steering_core.stream.decode_loop import MusicStream, StreamOptions
from steering_core.stream.graphs import CUDA_GRAPHS_MODES, CudaGraphRunner, CudaGraphsMode, GraphRunner, StepGraph
from steering_core.stream.layers import LayerOffsets, LayerWeights
from steering_core.stream.sampling import SamplingBuffers, draw_cfg, draw_every_stage

log = logging.getLogger(__name__)

#: An eager step attends over the filled slots rounded up to this many, not the whole
#: window: on musicgen-small's 1500-slot window, attending over every slot made the
#: static step slower than the loop on a CPU early in a window. A captured graph needs
#: fixed shapes, so it attends over all slots (masked) and pays that on the GPU instead.
EAGER_SPAN_BUCKET = 64


class UnsupportedSteering(UserError):
    """A concept the static step cannot apply (it steers plain ``add`` at ``resid_post``)."""


def static_step_supports(steerer: Steerer | None) -> str | None:
    """None if the static step can apply every concept of ``steerer``, else why not."""
    if steerer is None:
        return None
    for name, concept in steerer.concepts.items():
        if concept.operator != "add" or concept.vector.site != "resid_post":
            return (f"concept {name!r} is {concept.operator!r} at {concept.vector.site!r}; "
                    "the static step steers plain 'add' at 'resid_post' only")
    return None


class StaticStream(MusicStream):
    """``MusicStream`` with a static K/V store and a capturable steady-state step (see the module doc)."""

    def __init__(
        self,
        handle: MusicGenHandle,
        prompts: Sequence[str] | str,
        *,
        cuda_graphs: CudaGraphsMode = "off",
        graph_check_steps: int = 8,
        graph_runner_factory: Callable[[], GraphRunner] | None = None,
        **options: Unpack[StreamOptions],
    ) -> None:
        why = static_step_supports(options.get("steerer"))
        if why is not None:
            raise UnsupportedSteering(why)
        self._graph = StepGraph(cuda_graphs, handle.device, graph_check_steps, graph_runner_factory)
        self.cuda_graphs = cuda_graphs
        self._tokens_dirty_from: int | None = None  # before super().__init__, which assigns codes
        super().__init__(handle, prompts, **options)
        with torch.inference_mode(False):  # plain tensors: written in place in and out of inference mode
            self._allocate()

    @property
    def graph_state(self) -> str:
        """"pending" (not tried yet), "graph" (checked, replaying), "eager" (off or fell back)."""
        return self._graph.state

    @property
    def graph_fallback_reason(self) -> str | None:
        return self._graph.fallback_reason

    @property
    def graph_replays(self) -> int:
        return self._graph.replays

    def _allocate(self) -> None:
        """The fixed buffers a step reads and writes."""
        dev, dtype = self.device, self.handle.dtype
        rows = 2 * self.batch
        heads = self.handle.num_heads
        self.head_dim = self.handle.d_model // heads
        #: Self-attention slots: a window's positions never exceed window_frames + max_delay + 1.
        self.cache_len = self.window_frames + self.max_delay + 1
        dec = self._decoder
        self._layer_weights = [LayerWeights(layer) for layer in dec.layers]
        if dec.embed_positions.weights.shape[0] < self.cache_len:
            dec.embed_positions.make_weights(self.cache_len, dec.embed_positions.embedding_dim)
        shape = (self.handle.num_layers, rows, heads, self.cache_len, self.head_dim)
        self._k = torch.zeros(shape, device=dev, dtype=dtype)
        self._v = torch.zeros(shape, device=dev, dtype=dtype)
        self._slots = torch.arange(self.cache_len, device=dev)
        self._pos_t = torch.zeros((), dtype=torch.long, device=dev)
        #: Tokens each input position's step produced: [B, K, cache_len].
        self._tok = torch.full((self.batch, self.num_codebooks, self.cache_len), self.bos,
                               dtype=torch.long, device=dev)
        self.vocab = int(self.handle.decoder_config.vocab_size)
        self.sampling = SamplingBuffers(self.batch * self.num_codebooks, self.vocab, dev, dtype, batch=self.batch)
        if self.steerer is not None:  # the steerer's per-stream table: it owns the knobs
            tables = self.steerer.stream_knobs(self.batch)
            self.knobs, self.knob_enabled = tables.alpha, tables.enabled
        else:
            self.knobs = torch.zeros(self.batch, MAX_CONCEPTS, device=dev, dtype=torch.float32)
            self.knob_enabled = torch.ones(self.batch, MAX_CONCEPTS, device=dev, dtype=torch.float32)
        self._steer_on = torch.zeros((), device=dev, dtype=torch.float32)
        self._steer_on_host = False
        self._build_steering()
        self._cross_k: torch.Tensor | None = None
        self._cross_v: torch.Tensor | None = None
        self._cross_mask_buf: torch.Tensor | None = None
        #: Self-attention slots an eager step attends over (None: all of them, as a captured
        #: graph must). Set by ``step`` from the host's own position, so no device read.
        self._span: int | None = None
        self._write_cross()

    # --- codes: the device token buffer is copied into them on read -------------------
    @property
    def codes(self) -> torch.Tensor:
        self._flush()
        return self._codes

    @codes.setter
    def codes(self, value: torch.Tensor) -> None:
        self._codes = value

    def _flush(self) -> None:
        """Write the tokens of the static steps since the last flush into ``codes``."""
        start = self._tokens_dirty_from
        if start is None:
            return
        self._tokens_dirty_from = None
        stop = self.pos
        if stop <= start:
            return
        first_frame = self.w0 + start - self.max_delay
        self._ensure_capacity(self.w0 + stop)
        if first_frame >= 0:  # the steady state: one scatter for every codebook
            frames = self.w0 + torch.arange(start, stop, device=self.device)[None, :] - self._delays[:, None]
            self._codes.scatter_(2, frames.expand(self.batch, -1, -1), self._tok[:, :, start:stop])
        else:  # the stream's first steps: codebook k has no frame before step d(k)
            for k, d in enumerate(self.delays):
                lo = max(start, d - self.w0)
                if lo < stop:
                    self._codes[:, k, self.w0 + lo - d:self.w0 + stop - d] = self._tok[:, k, lo:stop]

    # --- steering: the steerer's fold, one product per stream --------------------------
    def _build_steering(self) -> None:
        """The directions of every concept, folded for a conditional and an unconditional row,
        as two [concepts, sites * d] matrices; a step's offsets are knobs [B, concepts] times them."""
        steerer = self.steerer
        n = len(steerer.concepts) if steerer is not None else 0
        self._steering_built_for = n
        self._steer_layers: list[int] = []
        if steerer is None or n == 0:
            return
        why = static_step_supports(steerer)
        if why is not None:
            raise UnsupportedSteering(why)
        h = self.handle
        layers = sorted({layer for c in steerer.concepts.values() for layer in c.layers})
        matrix = steerer.add_matrix([(layer, "resid_post") for layer in layers])
        folded = fold_rows(matrix, cfg_row_masks(2, True, h.device, h.dtype))  # [n, sites, (cond, uncond), d]
        self._w_cond = folded[:, :, 0].reshape(n, -1).contiguous()
        self._w_uncond = folded[:, :, 1].reshape(n, -1).contiguous()
        self._steer_layers = [layers.index(i) if i in layers else -1 for i in range(h.num_layers)]

    def _row_offsets(self) -> torch.Tensor | None:
        """[2B, sites, 1, d] offsets for this step (cond rows first), or None without concepts."""
        if not self._steer_layers:
            return None
        n = self._steering_built_for
        # Product in float32, then the model dtype: as Steerer, which rounds alpha to it first
        # (enabled and on are 0 or 1, so the product is exact either way).
        eff = (self.knobs[:, :n] * self.knob_enabled[:, :n] * self._steer_on).to(self.handle.dtype)
        rows = torch.cat([eff @ self._w_cond, eff @ self._w_uncond])
        return rows.view(2 * self.batch, -1, 1, self.handle.d_model)

    def _prepare_steer_flag(self) -> None:
        on = self.steerer is not None and self.steerer.resid_inline
        if on != self._steer_on_host:
            self._steer_on.fill_(1.0 if on else 0.0)
            self._steer_on_host = on

    # --- MusicStream's hooks: this K/V store and these tables ----------------------------
    def _layer_offsets(self, rows: int) -> LayerOffsets | None:
        """The prefill's offsets: this stream's per-row ones, not the steerer's shared ones."""
        self._prepare_steer_flag()
        offsets = self._row_offsets()
        return None if offsets is None else [None if s < 0 else offsets[:, s] for s in self._steer_layers]

    def _truncate_kv(self, keep: int) -> None:
        """No crop: the position moves back; slots past it are masked, then overwritten."""
        self._pos_t.fill_(keep)

    def _sync_tokens(self) -> None:
        self._flush()

    def _window_primed(self, tokens: torch.Tensor) -> None:
        """The prefill ran through transformers' layers on a DynamicCache: its K/V become the
        static slots, its last tokens the next step's input, and the dynamic cache is dropped."""
        n = self.pos
        self._tok[:, :, n - 1] = tokens
        layers: list[Any] = list(self.cache.self_attention_cache.layers)  # DynamicLayer: keys, values
        for i, layer in enumerate(layers):
            self._k[i, :, :, :n] = layer.keys
            self._v[i, :, :, :n] = layer.values
        self.cache = self._new_cache()
        self._pos_t.fill_(n)

    # --- prompt ------------------------------------------------------------------------
    def set_prompt(self, prompts: Sequence[str] | str) -> None:
        super().set_prompt(prompts)
        self._write_cross()

    def _write_cross(self) -> None:
        """Cross-attention K/V of the prompt into fixed buffers (grown only for a longer prompt)."""
        states = self.encoder_states
        rows, length, _ = states.shape
        heads, hd = self.handle.num_heads, self.head_dim
        cap = 0 if self._cross_k is None else self._cross_k.shape[3]
        if length > cap:  # a longer prompt than any so far: new buffers, so a new graph
            shape = (self.handle.num_layers, rows, heads, length, hd)
            self._cross_k = torch.zeros(shape, device=self.device, dtype=self.handle.dtype)
            self._cross_v = torch.zeros(shape, device=self.device, dtype=self.handle.dtype)
            self._cross_mask_buf = torch.zeros(rows, 1, 1, length, device=self.device, dtype=torch.bool)
            self._graph.invalidate("a longer prompt")
        assert self._cross_k is not None and self._cross_v is not None and self._cross_mask_buf is not None
        assert self._cross_mask is not None
        with torch.inference_mode(False), torch.no_grad():
            for i, layer in enumerate(self._decoder.layers):
                ea = layer.encoder_attn
                self._cross_k[i, :, :, :length] = ea.k_proj(states).view(rows, length, heads, hd).transpose(1, 2)
                self._cross_v[i, :, :, :length] = ea.v_proj(states).view(rows, length, heads, hd).transpose(1, 2)
            self._cross_mask_buf.zero_()
            self._cross_mask_buf[..., :length] = self._cross_mask.expand(rows, 1, 1, length)

    # --- the step ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        if self.pos >= self.window_frames:
            self._reprime()
            return
        if self.steerer is not None:
            if len(self.steerer.concepts) != self._steering_built_for:  # a concept was added
                self._build_steering()
                self._graph.invalidate("a new concept")
            if self.steerer.is_installed and not self.steerer.resid_inline:
                raise RuntimeError("StaticStream applies steering itself: use `with stream.steering():`, "
                                   "not steerer.installed()")
        self._remember_rng()
        self._prepare_step()
        graph = self._graph
        if graph.state == "pending" and self._ready_to_capture():
            graph.try_capture(self._device_step, self._save_device_state,
                              self._next_noise if self._draws_noise() else None, self._trial_tokens)
        if graph.state == "graph":
            graph.replay()
        else:
            self._span = min(self.cache_len, -(-(self.pos + 1) // EAGER_SPAN_BUCKET) * EAGER_SPAN_BUCKET)
            self._device_step()
            self._span = None
        self._after_step()

    def _prepare_step(self) -> None:
        """Host work before a step: settings and steering flag into their buffers (only on a
        change), and this step's sampling noise, drawn as ``torch.multinomial`` would."""
        self.sampling.write(self.settings)
        self._prepare_steer_flag()
        self.sampling.draw_noise(self.settings, self.generator)

    def _draws_noise(self) -> bool:
        """Whether a step draws sampling noise (not when greedy)."""
        return self.settings.temperature != 0.0

    def _after_step(self) -> None:
        last = self.w0 + self.pos  # the position just consumed predicts frame last - d(k)
        if self._tokens_dirty_from is None:
            self._tokens_dirty_from = self.pos
        self.pos += 1
        self._next_ids = None
        for k, d in enumerate(self.delays):
            if last - d >= 0:
                self.filled[k] = max(self.filled[k], last - d + 1)

    def _device_step(self) -> None:
        """One decode step on the device: reads ``_pos_t`` and the buffers, writes the K/V
        slot, the tokens and ``_pos_t + 1``. No host sync, no branch on a tensor value."""
        pos = self._pos_t
        at = pos.view(1)
        dec = self._decoder
        b, k_books = self.batch, self.num_codebooks
        rows, heads, hd = 2 * b, self.handle.num_heads, self.head_dim
        # Input: codebook k at position p holds frame w0 + p - 1 - d(k): the previous
        # step's token, or BOS before the window's start.
        prev = self._tok.index_select(2, (pos - 1).clamp_min(0).view(1)).squeeze(2)  # [B, K]
        ids = torch.where(pos - 1 - self._delays >= 0, prev, torch.full_like(prev, self.bos))
        ids = torch.cat([ids, ids])  # [2B, K]: conditional rows first, then unconditional
        hidden: torch.Tensor = sum(dec.embed_tokens[k](ids[:, k:k + 1]) for k in range(k_books))
        hidden = hidden + dec.embed_positions.weights.index_select(0, at).to(hidden.dtype)
        offsets = self._row_offsets()
        span = self.cache_len if self._span is None else self._span
        self_mask = (self._slots[:span] <= pos).view(1, 1, 1, -1)
        cross_k, cross_v, cross_mask = self._cross_k, self._cross_v, self._cross_mask_buf
        assert cross_k is not None and cross_v is not None
        for i, w in enumerate(self._layer_weights):
            residual = hidden
            x = w.self_norm(hidden)
            # One position: [rows, 1, heads*hd] is [rows, heads, 1, hd] in memory already, so
            # a view, not view + transpose (and the reverse after attention, not two copies).
            q = w.q(x).view(rows, heads, 1, hd)
            self._k[i].index_copy_(2, at, w.k(x).view(rows, heads, 1, hd))
            self._v[i].index_copy_(2, at, w.v(x).view(rows, heads, 1, hd))
            attn = F.scaled_dot_product_attention(q, self._k[i, :, :, :span], self._v[i, :, :, :span], attn_mask=self_mask,
                                                  dropout_p=0.0, scale=w.self_scaling)
            hidden = residual + w.o(attn.reshape(rows, 1, -1))
            residual = hidden
            x = w.cross_norm(hidden)
            q = w.cross_q(x).view(rows, heads, 1, hd)
            attn = F.scaled_dot_product_attention(q, cross_k[i], cross_v[i], attn_mask=cross_mask, dropout_p=0.0,
                                                  scale=w.cross_scaling)
            hidden = residual + w.cross_o(attn.reshape(rows, 1, -1))
            residual = hidden
            x = w.fc2(w.activation(w.fc1(w.final_norm(hidden))))
            hidden = residual + x
            if offsets is not None and (site := self._steer_layers[i]) >= 0:
                hidden = hidden + offsets[:, site]
            if self.taps is not None:  # probe readings (probe_tap.py): read only
                self.taps(i, hidden)
        last = dec.layer_norm(hidden)
        logits = torch.stack([head(last[:, 0]) for head in self._lm_heads], dim=1)  # [2B, K, V]
        tokens = self._sample(logits)
        self._tok.index_copy_(2, at, tokens[:, :, None])
        self._pos_t.add_(1)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampler's eager form for an eager step, its every-stage form for a graph
        (a graph is traced with ``_span`` None)."""
        if self._span is not None:
            return draw_cfg(logits, self.settings, self.sampling)
        return draw_every_stage(logits, self.sampling)

    # --- what a graph check needs ------------------------------------------------------------
    def _ready_to_capture(self) -> bool:
        # Past the window's first step, with room for the check before the next re-prime.
        return self.pos >= 1 and self.pos + self._graph.check_steps < self.window_frames

    def _save_device_state(self) -> Callable[[], None]:
        """Snapshot what a device step moves on (position, tokens, noise, RNG); returns the restore."""
        saved_pos, saved_tok = self._pos_t.clone(), self._tok.clone()
        saved_noise, saved_rng = self.sampling.noise.clone(), self.generator.get_state()

        def restore() -> None:
            self._pos_t.copy_(saved_pos)
            self._tok.copy_(saved_tok)
            self.sampling.noise.copy_(saved_noise)
            self.generator.set_state(saved_rng)

        return restore

    def _next_noise(self) -> None:
        self.sampling.draw_noise(self.settings, self.generator)

    def _trial_tokens(self, n: int) -> torch.Tensor:
        return self._tok[:, :, self.pos:self.pos + n].clone()


def open_stream(handle: MusicGenHandle, prompts: Sequence[str] | str, *, engine: str = "auto",
                cuda_graphs: CudaGraphsMode = "auto", **options: Unpack[StreamOptions]) -> MusicStream:
    """The stream to use: ``engine`` ``static`` (StaticStream), ``loop`` (MusicStream), or
    ``auto``: static unless its steering cannot apply the concepts, then the loop with one
    log line. ``cuda_graphs`` applies to the static step only."""
    if engine not in ("auto", "static", "loop"):
        raise UserError(f"engine must be auto, static or loop, got {engine!r}")
    if engine == "loop":
        return MusicStream(handle, prompts, **options)
    why = static_step_supports(options.get("steerer"))
    if why is not None:
        if engine == "static":
            raise UnsupportedSteering(why)
        log.info("decode loop instead of the static step: %s", why)
        return MusicStream(handle, prompts, **options)
    return StaticStream(handle, prompts, cuda_graphs=cuda_graphs, **options)


def count_graph_breaks(stream: StaticStream) -> int:
    """Graph breaks ``torch._dynamo.explain`` finds in one static step (0: it traces whole).
    Traces one step from the stream's current state, then restores that state."""
    restore = stream._save_device_state()
    stream._prepare_step()

    def one_step() -> None:
        with torch.no_grad():
            stream._device_step()

    try:
        explained = torch._dynamo.explain(one_step)()
    finally:
        restore()
        torch._dynamo.reset()
    return int(explained.graph_break_count)


__all__ = ["CUDA_GRAPHS_MODES", "CudaGraphRunner", "CudaGraphsMode", "GraphRunner", "StaticStream",
           "UnsupportedSteering", "count_graph_breaks", "open_stream", "static_step_supports"]
