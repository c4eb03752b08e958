"""A static, graph-capturable decode step: ``StaticStream``.

``MusicStream`` grows a ``DynamicCache``, crops it on rollback and samples with host-side
bookkeeping; none of that can be captured in a CUDA graph. ``StaticStream`` keeps the
same public behaviour (same tokens, same rollback, re-prime and prompt-change semantics)
but runs every steady-state step as one function over fixed buffers:

* self-attention K/V preallocated for the whole window plus the delay,
  ``[layers, 2B, heads, window + max_delay + 1, head_dim]``; a step writes its K/V at the
  position and attends to every slot with a mask ``slot <= position``;
* cross-attention K/V computed once per prompt into fixed buffers (padded and masked
  to the longest prompt seen, so a new prompt is a copy, not a new shape);
* the position is a 0-d device tensor, the step's input is gathered on the device from
  the previous step's tokens (BOS where the delay pattern says so), and the new tokens
  are written into a device-side buffer ``[B, K, cache length]``; the host copies them
  into ``codes`` only when someone reads ``codes``;
* embeddings, layers (transformers' own layer norms, projections, fc1/fc2), per-stream
  steering offsets, LM heads, CFG, temperature, top-k, top-p and the draw all happen on
  the device, with no host synchronisation and no Python branch on a tensor's value.

Sampling without a host sync. ``torch.multinomial(p, 1, generator=g)`` is, in ATen,
``argmax(p / q)`` with ``q = empty_like(p).exponential_(1, generator=g)`` (the Gumbel /
exponential race). The static step does exactly that, but the noise ``q`` is drawn by the
host loop *before* the step (one kernel, no sync) into a fixed buffer: a
``torch.Generator`` argument is a graph break for dynamo, and a CUDA graph replaying a
draw from a private generator needs that generator registered with the graph, which
would also break the RNG save/restore that rollback relies on. The generator is consumed
exactly as ``sampling.sample`` consumes it (no draw when greedy), so the same seed gives
the same tokens (``tests/test_static_step.py`` checks it). Settings are tensors
(guidance, temperature, top-k, top-p) so changing them writes into the buffers; top-k
uses the k-th value of a descending sort instead of ``torch.topk(k)`` (whose ``k`` must be
a Python int): the same threshold, so the same mask.

Re-prime stays a separate prefill through the same transformers path ``MusicStream``
uses; its K/V are then copied into the static buffers.

Steering: concepts must be plain ``add`` at ``resid_post`` (the fused, inline case of
``Steerer``); the knob table is per stream, ``[streams, concepts]`` in float32, cast to
the model dtype at use, so each row of a batch has its own alphas and enables.
``steerer.set_alpha``/``set_enabled`` still work: they write the value into every row.

CUDA graphs (``cuda_graphs="auto"|"on"|"off"``): after the first step of a window the
step is captured once and replayed; every change (knobs, prompt, settings, position,
rollback) is a write into the captured buffers. Before trusting the graph the stream
checks it: N steps replayed and N eager from the same state must give the same tokens;
on any difference it logs one line and stays eager. The CUDA path is untested on a GPU
(none was available when it was written); the comparison and the fallback are tested on
the CPU with fake runners.

Threading model: as ``MusicStream``: one thread steps the stream; knob writes
(``set_alpha``/``set_enabled``, also through the steerer) may come from any thread
between frames: they are in-place writes into the knob table, read at the next step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from steering_core.errors import UnknownConceptError, UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import MAX_CONCEPTS, Steerer
from steering_core.steer.vectors import CFG_MODES
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings

log = logging.getLogger(__name__)

CudaGraphsMode = Literal["auto", "on", "off"]
CUDA_GRAPHS_MODES: tuple[str, ...] = ("auto", "on", "off")
#: An eager step attends over the filled slots rounded up to this many, not the whole
#: window: on musicgen-small's 1500-slot window, attending over every slot made the
#: static step 0.89x the loop on a CPU early in a window. A captured graph needs fixed
#: shapes, so it attends over all slots (masked) and pays that on the GPU instead.
EAGER_SPAN_BUCKET = 64


class GraphRunner(Protocol):
    """Captures a step function once and replays it."""

    def capture(self, step: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraphRunner:
    """``torch.cuda.CUDAGraph`` around the step. Untested on a GPU so far."""

    def __init__(self, device: torch.device, warmup_steps: int = 3) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, step: Callable[[], None]) -> None:
        # Warm-up on a side stream, as torch.cuda.graphs recommends; the caller restores
        # the state the warm-up steps moved on.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()


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


class LayerNorm:
    """``nn.LayerNorm``'s forward without the module call (a few µs each, 18 a step)."""

    def __init__(self, norm: torch.nn.LayerNorm) -> None:
        self.shape, self.weight, self.bias, self.eps = tuple(norm.normalized_shape), norm.weight, norm.bias, norm.eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class Linear:
    """``nn.Linear``'s forward without the module call (a few µs each, 48 a step)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        self.weight, self.bias = linear.weight, linear.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerWeights:
    """One decoder layer's weights, read once, for a step that calls ``F.linear`` and
    ``F.layer_norm`` on them directly: the same ops as the modules' forwards, so the same
    bits. On a small model on a CPU the module calls were about a tenth of the step."""

    def __init__(self, layer: torch.nn.Module) -> None:
        sa, ea = layer.self_attn, layer.encoder_attn
        self.q, self.k, self.v, self.o = Linear(sa.q_proj), Linear(sa.k_proj), Linear(sa.v_proj), Linear(sa.out_proj)
        self.cross_q, self.cross_o = Linear(ea.q_proj), Linear(ea.out_proj)
        self.fc1, self.fc2 = Linear(layer.fc1), Linear(layer.fc2)
        self.self_norm = LayerNorm(layer.self_attn_layer_norm)
        self.cross_norm = LayerNorm(layer.encoder_attn_layer_norm)
        self.final_norm = LayerNorm(layer.final_layer_norm)
        self.activation = layer.activation_fn
        self.self_scaling, self.cross_scaling = sa.scaling, ea.scaling


class StaticStream(MusicStream):
    """``MusicStream`` with a static, capturable steady-state step (see the module doc)."""

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
        cuda_graphs: CudaGraphsMode = "off",
        graph_check_steps: int = 8,
        graph_runner_factory: Callable[[], GraphRunner] | None = None,
    ) -> None:
        why = static_step_supports(steerer)
        if why is not None:
            raise UnsupportedSteering(why)
        if cuda_graphs not in CUDA_GRAPHS_MODES:
            raise UserError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS_MODES)}, got {cuda_graphs!r}")
        self._tokens_dirty_from: int | None = None  # before super().__init__, which assigns codes
        super().__init__(handle, prompts, seed=seed, settings=settings, steerer=steerer,
                         window_frames=window_frames, reprime_frames=reprime_frames,
                         rollback_depth=rollback_depth)
        with torch.inference_mode(False):  # plain tensors: written in place in and out of inference mode
            self._allocate()
        if steerer is not None:
            steerer.add_knob_listener(self._on_steerer_knob)
        dev = self.device
        # CUDA graphs
        self.cuda_graphs = cuda_graphs
        self.graph_check_steps = graph_check_steps
        self._runner_factory = graph_runner_factory
        if self._runner_factory is None and dev.type == "cuda":
            self._runner_factory = lambda: CudaGraphRunner(dev)
        self._runner: GraphRunner | None = None
        #: "pending" (not tried yet), "graph" (checked, replaying), "eager" (off or fell back)
        self.graph_state = "pending" if self._graphs_wanted() else "eager"
        self.graph_fallback_reason: str | None = None
        self.graph_replays = 0

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
        vocab = int(self.handle.decoder_config.vocab_size)
        self.vocab = vocab
        self._noise = torch.ones(self.batch * self.num_codebooks, vocab, device=dev, dtype=torch.float32)
        # Sampling settings as device scalars, rewritten when the settings object changes.
        self._guidance = torch.zeros((), device=dev, dtype=dtype)
        self._use_cfg = torch.zeros((), device=dev, dtype=torch.bool)
        self._temperature = torch.zeros((), device=dev, dtype=torch.float32)
        self._greedy = torch.zeros((), device=dev, dtype=torch.bool)
        self._top_k = torch.zeros((), device=dev, dtype=torch.long)
        self._top_p = torch.zeros((), device=dev, dtype=torch.float32)
        self._settings_written: tuple[float, float, int, float] | None = None
        #: Per-stream knob table [streams, concepts]: float32 (cast at use), one row per stream.
        self.knobs = torch.zeros(self.batch, MAX_CONCEPTS, device=dev, dtype=torch.float32)
        self.knob_enabled = torch.ones(self.batch, MAX_CONCEPTS, device=dev, dtype=torch.float32)
        self._steer_on = torch.zeros((), device=dev, dtype=torch.float32)
        self._steer_on_host = False
        self._steering_built_for = -1
        self._build_steering()
        self._cross_k: torch.Tensor | None = None
        self._cross_v: torch.Tensor | None = None
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

    # --- knobs ----------------------------------------------------------------------
    def set_alpha(self, name: str, value: float, stream: int | None = None) -> None:
        """One concept's knob for one stream (row of the batch), or every stream. From any
        thread: under the steerer's knob lock, like a steerer-wide write."""
        steerer = self._steerer_for(name)
        rows = slice(None) if stream is None else stream
        with steerer.knob_writes():
            self.knobs[rows, steerer.slot(name)] = float(value)

    def set_enabled(self, name: str, enabled: bool, stream: int | None = None) -> None:
        steerer = self._steerer_for(name)
        rows = slice(None) if stream is None else stream
        with steerer.knob_writes():
            self.knob_enabled[rows, steerer.slot(name)] = 1.0 if enabled else 0.0

    def _steerer_for(self, name: str) -> Steerer:
        if self.steerer is None:
            raise UnknownConceptError(f"unknown concept {name!r} (no steerer)")
        return self.steerer

    def _on_steerer_knob(self, slot: int, alpha: float | None, enabled: bool | None) -> None:
        if alpha is not None:
            self.knobs[:, slot] = float(alpha)
        if enabled is not None:
            self.knob_enabled[:, slot] = 1.0 if enabled else 0.0

    def _build_steering(self) -> None:
        """The directions of every concept, per CFG row kind, as two [concepts, sites * d]
        matrices; a step's offsets are knobs [B, concepts] times them."""
        steerer = self.steerer
        concepts = list(steerer.concepts.values()) if steerer is not None else []
        self._steering_built_for = len(concepts)
        if not concepts:
            self._steer_layers: list[int] = []
            return
        why = static_step_supports(steerer)
        if why is not None:
            raise UnsupportedSteering(why)
        h = self.handle
        for c in concepts:  # rows of the table follow the steerer's own knobs at build time
            self.knobs[:, c.slot] = float(c.alpha.item())
            self.knob_enabled[:, c.slot] = 1.0 if c.enabled else 0.0
        layers = sorted({layer for c in concepts for layer in c.layers})
        self._steer_layers = [layers.index(i) if i in layers else -1 for i in range(h.num_layers)]
        n = len(concepts)
        fused = torch.zeros(n, len(CFG_MODES), len(layers), h.d_model, device=h.device, dtype=h.dtype)
        for c in concepts:
            for layer in c.layers:
                i = c.vector.layers.index(layer)
                fused[c.slot, CFG_MODES.index(c.cfg_mode), layers.index(layer)] += \
                    (c.vector.directions[i] * c.vector.gains[i]).to(h.device, h.dtype)
        # Folded as Steerer._fold folds its row masks (a sum over the modes), so the same bits.
        cond = torch.tensor([m in ("cond", "both") for m in CFG_MODES], device=h.device, dtype=h.dtype)
        uncond = torch.tensor([m in ("uncond", "both") for m in CFG_MODES], device=h.device, dtype=h.dtype)
        self._w_cond = (fused * cond[None, :, None, None]).sum(dim=1).reshape(n, -1).contiguous()
        self._w_uncond = (fused * uncond[None, :, None, None]).sum(dim=1).reshape(n, -1).contiguous()
        self._n_concepts = n

    def _row_offsets(self) -> torch.Tensor | None:
        """[2B, sites, 1, d] offsets for this step (cond rows first), or None without concepts."""
        if not self._steer_layers:
            return None
        n = self._n_concepts
        # Product in float32, then the model dtype: as Steerer, which rounds alpha to it first
        # (enabled and on are 0 or 1, so the product is exact either way).
        eff = (self.knobs[:, :n] * self.knob_enabled[:, :n] * self._steer_on).to(self.handle.dtype)
        rows = torch.cat([eff @ self._w_cond, eff @ self._w_uncond])
        return rows.view(2 * self.batch, -1, 1, self.handle.d_model)

    # --- settings, prompt -------------------------------------------------------------
    def _write_settings(self) -> None:
        s = self.settings
        key = (s.guidance_scale, s.temperature, s.top_k, s.top_p)
        if key == self._settings_written:
            return
        s.validate()
        self._guidance.fill_(float(s.guidance_scale))
        self._use_cfg.fill_(s.uses_cfg)
        self._temperature.fill_(float(s.temperature) if s.temperature != 0.0 else 1.0)
        self._greedy.fill_(s.temperature == 0.0)
        self._top_k.fill_(int(s.top_k) if 0 < s.top_k < self.vocab else 0)
        self._top_p.fill_(float(s.top_p) if 0.0 < s.top_p < 1.0 else 0.0)
        self._settings_written = key

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
            self._invalidate_graph("a longer prompt")
            cap = length
        assert self._cross_k is not None and self._cross_v is not None
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
                self._invalidate_graph("a new concept")
            if self.steerer.is_installed and not self.steerer.resid_inline:
                raise RuntimeError("StaticStream applies steering itself: use `with stream.steering():`, "
                                   "not steerer.installed()")
        self._rng_history.append((self.next_frame, self.generator.get_state()))
        self._prepare_step()
        if self.graph_state == "pending" and self._ready_to_capture():
            self._capture_and_check()
        if self.graph_state == "graph":
            assert self._runner is not None
            self._runner.replay()
            self.graph_replays += 1
        else:
            self._span = min(self.cache_len, -(-(self.pos + 1) // EAGER_SPAN_BUCKET) * EAGER_SPAN_BUCKET)
            self._device_step()
            self._span = None
        self._after_step()

    def _prepare_step(self) -> None:
        """Host work before a step: settings and steering flag into their buffers (only on a
        change), and this step's sampling noise, drawn as ``torch.multinomial`` would."""
        self._write_settings()
        self._prepare_steer_flag()
        if self.settings.temperature != 0.0:
            self._noise.exponential_(1, generator=self.generator)

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
        hidden = sum(dec.embed_tokens[k](ids[:, k:k + 1]) for k in range(k_books))
        hidden = hidden + dec.embed_positions.weights.index_select(0, at).to(hidden.dtype)
        offsets = self._row_offsets()
        span = self.cache_len if self._span is None else self._span
        self_mask = (self._slots[:span] <= pos).view(1, 1, 1, -1)
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
            attn = F.scaled_dot_product_attention(q, self._cross_k[i], self._cross_v[i],
                                                  attn_mask=self._cross_mask_buf, dropout_p=0.0, scale=w.cross_scaling)
            hidden = residual + w.cross_o(attn.reshape(rows, 1, -1))
            residual = hidden
            x = w.fc2(w.activation(w.fc1(w.final_norm(hidden))))
            hidden = residual + x
            if offsets is not None and (site := self._steer_layers[i]) >= 0:
                hidden = hidden + offsets[:, site]
        last = dec.layer_norm(hidden)
        logits = torch.stack([head(last[:, 0]) for head in self._lm_heads], dim=1)  # [2B, K, V]
        tokens = self._sample(logits)
        self._tok.index_copy_(2, at, tokens[:, :, None])
        self._pos_t.add_(1)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """CFG, temperature, top-k, top-p and the draw, as ``sampling.guide``/``sample``
        compute them, with every setting a tensor and the draw from ``_noise``."""
        if self._span is not None:  # an eager step (a graph is traced with _span None)
            return self._sample_eager(logits)
        cond, uncond = logits.chunk(2, dim=0)
        guided = torch.where(self._use_cfg, uncond + self._guidance * (cond - uncond), cond).float()
        greedy = guided.argmax(dim=-1)
        scaled = guided / self._temperature
        vocab = scaled.shape[-1]
        ordered = torch.sort(scaled, descending=True, dim=-1).values
        kth = ordered.index_select(-1, (self._top_k - 1).clamp(0, vocab - 1).view(1))
        scaled = scaled.masked_fill((self._top_k > 0) & (scaled < kth), -math.inf)
        sorted_logits, order = torch.sort(scaled, descending=True, dim=-1)
        soft = sorted_logits.softmax(dim=-1)
        drop_sorted = (self._top_p > 0) & (soft.cumsum(dim=-1) - soft > self._top_p)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = scaled.masked_fill(drop, -math.inf).softmax(dim=-1)
        flat = probs.reshape(-1, vocab)
        drawn = (flat / self._noise).argmax(dim=-1).view(probs.shape[:-1])
        return torch.where(self._greedy, greedy, drawn)

    def _sample_eager(self, logits: torch.Tensor) -> torch.Tensor:
        """``_sample`` without the stages the host's settings switch off. A graph must run
        them all, masks that mask nothing included; eagerly they were a twentieth of a
        small model's step on a CPU. An all-False mask is the identity and the k-th value is
        the k-th value, so the tokens are the same bit for bit (tests/test_static_step.py)."""
        s = self.settings
        cond, uncond = logits.chunk(2, dim=0)
        guided = (uncond + self._guidance * (cond - uncond)).float() if s.uses_cfg else cond.float()
        if s.temperature == 0.0:
            return guided.argmax(dim=-1)
        scaled = guided / self._temperature
        if 0 < s.top_k < self.vocab:
            kth = scaled.topk(int(s.top_k), dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        if 0.0 < s.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True, dim=-1)
            soft = sorted_logits.softmax(dim=-1)
            drop_sorted = soft.cumsum(dim=-1) - soft > self._top_p
            scaled = scaled.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), -math.inf)
        probs = scaled.softmax(dim=-1)
        return (probs.reshape(-1, self.vocab) / self._noise).argmax(dim=-1).view(probs.shape[:-1])

    # --- window changes, rollback -------------------------------------------------------
    def _write(self, tokens: torch.Tensor) -> None:
        """A prefill's tokens (re-prime): into ``codes`` as MusicStream does, and into the
        token buffer so the next static step reads them as its input."""
        self._flush()
        super()._write(tokens)
        self._tok[:, :, self.pos - 1] = tokens

    def _reprime(self) -> None:
        self._flush()
        super()._reprime()
        # The prefill ran through transformers' layers on a DynamicCache; its K/V become
        # the static cache's first slots, and the dynamic one is dropped.
        n = self.pos
        for i, layer in enumerate(self.cache.self_attention_cache.layers):
            self._k[i, :, :, :n] = layer.keys
            self._v[i, :, :, :n] = layer.values
        self.cache = self._new_cache()
        self._pos_t.fill_(n)

    def rollback(self, step: int) -> int:
        """As ``MusicStream.rollback``, without a crop: the position moves back, the RNG
        and codes are restored; slots past the position are masked and then overwritten."""
        self._flush()
        step = max(step, self.w0 + 1, self._oldest_rollback_step())
        if step >= self.next_frame:
            return self.next_frame
        self.pos = step - self.w0
        self._pos_t.fill_(self.pos)
        self._next_ids = None
        self.filled = [min(f, max(0, step - d)) for d, f in zip(self.delays, self.filled, strict=True)]
        while self._rng_history and self._rng_history[-1][0] >= step:
            at, state = self._rng_history.pop()
            if at == step:
                self.generator.set_state(state)
        return step

    def _decoder_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The prefill (re-prime, measure_reprime): MusicStream's path, with this stream's
        per-row offsets instead of the steerer's shared ones."""
        ids = input_ids.reshape(-1, self.num_codebooks, input_ids.shape[-1])
        n = ids.shape[-1]
        past = self.cache.get_seq_length()
        dec = self._decoder
        hidden = sum(dec.embed_tokens[k](ids[:, k]) for k in range(self.num_codebooks))
        hidden = hidden + dec.embed_positions.weights[past:past + n].to(hidden.dtype)
        self._prepare_steer_flag()
        offsets = self._row_offsets()
        for i, layer in enumerate(dec.layers):
            hidden = layer(hidden, None, self.encoder_states, encoder_attention_mask=self._cross_mask,
                           past_key_values=self.cache, use_cache=True)
            if offsets is not None and (site := self._steer_layers[i]) >= 0:
                hidden = hidden + offsets[:, site]
        last = dec.layer_norm(hidden[:, -1:])
        return torch.stack([head(last[:, 0]) for head in self._lm_heads], dim=1)

    def _prepare_steer_flag(self) -> None:
        on = self.steerer is not None and self.steerer.resid_inline
        if on != self._steer_on_host:
            self._steer_on.fill_(1.0 if on else 0.0)
            self._steer_on_host = on

    # --- CUDA graphs that check themselves -------------------------------------------------
    def _graphs_wanted(self) -> bool:
        if self.cuda_graphs == "off":
            return False
        if self._runner_factory is None:
            if self.cuda_graphs == "on":
                raise UserError("--cuda-graphs on needs a CUDA device")
            return False  # auto on the CPU: eager
        return True

    def _invalidate_graph(self, why: str) -> None:
        if getattr(self, "graph_state", "eager") == "graph":
            log.info("static step: re-capturing the CUDA graph (%s)", why)
            self._runner = None
            self.graph_state = "pending"

    def _ready_to_capture(self) -> bool:
        # Past the window's first step, with room for the check before the next re-prime.
        return self.pos >= 1 and self.pos + self.graph_check_steps < self.window_frames

    def _capture_and_check(self) -> None:
        """Capture, then N steps replayed and N eager from the same state: the same tokens, or
        eager for good with one log line. The stream's state is restored afterwards, and
        ``_prepare_step`` has already drawn this step's noise (kept as it was)."""
        assert self._runner_factory is not None
        n = self.graph_check_steps
        saved_pos = self._pos_t.clone()
        saved_tok = self._tok.clone()
        saved_noise = self._noise.clone()
        saved_rng = self.generator.get_state()
        sampling = self.settings.temperature != 0.0

        def restore() -> None:
            self._pos_t.copy_(saved_pos)
            self._tok.copy_(saved_tok)
            self._noise.copy_(saved_noise)
            self.generator.set_state(saved_rng)

        def run(one_step: Callable[[], None]) -> torch.Tensor:
            for i in range(n):
                if i > 0 and sampling:
                    self._noise.exponential_(1, generator=self.generator)
                one_step()
            return self._tok[:, :, self.pos:self.pos + n].clone()

        try:
            runner = self._runner_factory()
            runner.capture(self._device_step)
            restore()
            replayed = run(runner.replay)
            restore()
            eager = run(self._device_step)
            restore()
        except Exception as exc:  # any failure to capture means eager
            restore()
            self._fall_back(f"capture failed ({type(exc).__name__}: {exc})")
            return
        if torch.equal(replayed, eager):
            self._runner = runner
            self.graph_state = "graph"
            log.info("static step: CUDA graph checked (%d steps identical to eager); replaying", n)
        else:
            diff = int((replayed != eager).sum().item())
            self._fall_back(f"{diff} of {eager.numel()} tokens differ from eager over {n} steps")

    def _fall_back(self, why: str) -> None:
        self._runner = None
        self.graph_state = "eager"
        self.graph_fallback_reason = why
        log.warning("static step: CUDA graphs off, running eager: %s", why)


def open_stream(handle: MusicGenHandle, prompts: Sequence[str] | str, *, engine: str = "auto",
                cuda_graphs: CudaGraphsMode = "auto", **kwargs: object) -> MusicStream:
    """The stream to use: ``engine`` ``static`` (StaticStream), ``loop`` (MusicStream), or
    ``auto``: static unless its steering cannot apply the concepts, then the loop with one
    log line. ``cuda_graphs`` applies to the static step only."""
    if engine not in ("auto", "static", "loop"):
        raise UserError(f"engine must be auto, static or loop, got {engine!r}")
    if engine == "loop":
        return MusicStream(handle, prompts, **kwargs)  # type: ignore[arg-type]
    steerer = kwargs.get("steerer")
    why = static_step_supports(steerer if isinstance(steerer, Steerer) else None)
    if why is not None:
        if engine == "static":
            raise UnsupportedSteering(why)
        log.info("decode loop instead of the static step: %s", why)
        return MusicStream(handle, prompts, **kwargs)  # type: ignore[arg-type]
    return StaticStream(handle, prompts, cuda_graphs=cuda_graphs, **kwargs)  # type: ignore[arg-type]


def count_graph_breaks(stream: StaticStream) -> int:
    """Graph breaks ``torch._dynamo.explain`` finds in one static step (0: it traces whole).
    Traces one step from the stream's current state, then restores that state."""
    saved_pos, saved_tok, saved_rng = stream._pos_t.clone(), stream._tok.clone(), stream.generator.get_state()
    stream._prepare_step()

    def one_step() -> None:
        with torch.no_grad():
            stream._device_step()

    try:
        explained = torch._dynamo.explain(one_step)()
    finally:
        stream._pos_t.copy_(saved_pos)
        stream._tok.copy_(saved_tok)
        stream.generator.set_state(saved_rng)
        torch._dynamo.reset()
    return int(explained.graph_break_count)


__all__ = ["CUDA_GRAPHS_MODES", "CudaGraphRunner", "GraphRunner", "StaticStream", "UnsupportedSteering",
           "count_graph_breaks", "open_stream", "static_step_supports"]
