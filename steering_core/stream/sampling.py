"""Turning the decoder's logits into the next tokens: CFG, temperature, top-k, top-p, the draw.

``SamplingSettings`` (``settings.py``) may change between any two frames; the samplers read it fresh each
step. Sampling draws from an explicit ``torch.Generator`` so a seed fixes the music.

The draw. ``torch.multinomial(p, 1, generator=g)`` is, in ATen, ``argmax(p / q)`` with
``q = empty_like(p).exponential_(1, generator=g)`` (the exponential race). Every sampler
here draws exactly that way (``race``), with the noise drawn from the generator as
multinomial draws it (none when greedy), so the tokens are ``generate()``'s. Drawing the
noise apart from the step lets a static step take it from a fixed buffer filled before
the step: a generator argument is a graph break for dynamo, and a CUDA graph replaying a
private generator's draw would break the RNG save/restore rollback relies on.

One computation, two forms:

* ``draw`` (eager) skips every stage the host's settings switch off: greedy returns the
  argmax, top-k runs only for ``0 < top_k < vocab``, top-p only for ``0 < top_p < 1``;
* ``draw_every_stage`` (for a captured graph, which cannot branch on the host) runs every
  stage with the settings as device tensors (``SamplingBuffers``): a stage switched off
  is a mask that masks nothing, and top-k takes the k-th value of a descending sort (the
  same threshold ``torch.topk`` gives, with ``k`` a tensor). An all-False mask is the
  identity, so both forms give the same tokens bit for bit (tests/test_static_step.py).

The buffers hold one value per row of the batch, so the stems of a ``StemStream`` each
sample with their own settings: the graph form broadcasts them, the eager form draws row
by row (``draw_rows``) when the rows' settings differ and batched when they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from steering_core.stream.settings import SamplingSettings


class SamplingValues(Protocol):
    """The numbers ``draw`` computes with: the settings' own floats, or a static step's
    device scalars (so its eager steps compute exactly what its captured graph does)."""

    @property
    def temperature(self) -> float | torch.Tensor: ...

    @property
    def top_p(self) -> float | torch.Tensor: ...


def guide(logits: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on a CFG batch [2B, ...]: conditional rows first."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def noise_for(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The race's noise for logits [..., V], drawn as ``torch.multinomial`` draws it: [rows, V]."""
    flat = logits.reshape(-1, logits.shape[-1])
    return torch.empty(flat.shape, dtype=torch.float32, device=logits.device).exponential_(1, generator=generator)


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``torch.multinomial(probs, 1)``'s draw with its noise given: probs [..., V] -> ids [...]."""
    return (probs.reshape(-1, probs.shape[-1]) / noise).argmax(dim=-1).view(probs.shape[:-1])


def _nucleus_drop(scaled: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """Where top-p drops a token: past the smallest set whose probability exceeds ``top_p``."""
    sorted_logits, order = torch.sort(scaled, descending=True, dim=-1)
    soft = sorted_logits.softmax(dim=-1)
    drop_sorted = soft.cumsum(dim=-1) - soft > top_p
    return torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)


def sample(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """logits [..., V] (already guided) -> token ids [...], the noise drawn from ``generator``."""
    return draw(logits, settings, None if settings.temperature == 0.0 else noise_for(logits, generator))


def draw(logits: torch.Tensor, settings: SamplingSettings, noise: torch.Tensor | None,
         values: SamplingValues | None = None) -> torch.Tensor:
    """The eager form: logits [..., V] (already guided) -> ids [...], skipping the stages
    ``settings`` switch off. ``noise`` [rows, V] (None when greedy); ``values`` the numbers
    to compute with (default: the settings' own)."""
    v: SamplingValues = settings if values is None else values
    logits = logits.float()
    if settings.temperature == 0.0:
        return logits.argmax(dim=-1)
    assert noise is not None, "a sampled draw needs its noise"
    logits = logits / v.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if 0.0 < settings.top_p < 1.0:
        logits = logits.masked_fill(_nucleus_drop(logits, v.top_p), -math.inf)
    return race(logits.softmax(dim=-1), noise)


class SamplingBuffers:
    """A static step's sampling state on the device: the settings as per-row tensors
    ([batch, 1, 1], so they broadcast over a row's [K, V] logits; rewritten only when the
    settings change) and the noise buffer the host fills before each step. One settings
    object fills every row alike; a sequence gives each row of the batch its own (stems)."""

    def __init__(self, rows: int, vocab: int, device: torch.device, dtype: torch.dtype, batch: int = 1) -> None:
        self.vocab = vocab
        self.batch = batch
        shape = (batch, 1, 1)
        self.guidance = torch.zeros(shape, device=device, dtype=dtype)
        self.use_cfg = torch.zeros(shape, device=device, dtype=torch.bool)
        self.temperature = torch.zeros(shape, device=device, dtype=torch.float32)  # 1 when greedy
        self.greedy = torch.zeros((batch, 1), device=device, dtype=torch.bool)
        self.top_k = torch.zeros(shape, device=device, dtype=torch.long)  # 0: off
        self.top_p = torch.zeros(shape, device=device, dtype=torch.float32)  # 0: off
        self.noise = torch.ones(rows, vocab, device=device, dtype=torch.float32)
        self._written: tuple[tuple[float, float, int, float], ...] | None = None

    def write(self, settings: SamplingSettings | Sequence[SamplingSettings]) -> None:
        each = [settings] * self.batch if isinstance(settings, SamplingSettings) else list(settings)
        if len(each) != self.batch:
            raise ValueError(f"{len(each)} rows of settings for a batch of {self.batch}")
        key = tuple((s.guidance_scale, s.temperature, s.top_k, s.top_p) for s in each)
        if key == self._written:
            return
        for i, s in enumerate(each):
            s.validate()
            self.guidance[i].fill_(float(s.guidance_scale))
            self.use_cfg[i].fill_(s.uses_cfg)
            self.temperature[i].fill_(float(s.temperature) if s.temperature != 0.0 else 1.0)
            self.greedy[i].fill_(s.temperature == 0.0)
            self.top_k[i].fill_(int(s.top_k) if 0 < s.top_k < self.vocab else 0)
            self.top_p[i].fill_(float(s.top_p) if 0.0 < s.top_p < 1.0 else 0.0)
        self._written = key

    def draw_noise(self, settings: SamplingSettings, generator: torch.Generator) -> None:
        """This step's noise, as ``noise_for`` draws it (nothing when greedy)."""
        if settings.temperature != 0.0:
            self.noise.exponential_(1, generator=generator)

    def row(self, i: int) -> _RowValues:
        """Row ``i``'s device values, shaped [1, 1, 1] (its eager draw's ``values``)."""
        return _RowValues(self.temperature[i:i + 1], self.top_p[i:i + 1], self.guidance[i:i + 1])


@dataclass(frozen=True)
class _RowValues:
    temperature: torch.Tensor
    top_p: torch.Tensor
    guidance: torch.Tensor


def draw_cfg(logits: torch.Tensor, settings: SamplingSettings, buffers: SamplingBuffers) -> torch.Tensor:
    """``draw`` on a CFG batch [2B, ..., V] with a static step's buffers (eager steps)."""
    guided = guide(logits, buffers.guidance) if settings.uses_cfg else logits.chunk(2, dim=0)[0]
    return draw(guided, settings, buffers.noise, buffers)


def draw_rows(logits: torch.Tensor, settings: Sequence[SamplingSettings], noise: torch.Tensor | None,
              values: SamplingBuffers | None = None) -> torch.Tensor:
    """``draw`` on a CFG batch [2B, K, V] where each row has its own settings: row by row,
    each with its own stages, its slice of the noise [B*K, V] and (``values``) its slice of a
    static step's buffers. Every stage works along a row's last axis, so a row draws what a
    batch of rows with its settings would. Greedy rows need no noise (None: all greedy)."""
    batch = len(settings)
    books = logits.shape[1]
    out = []
    for i, s in enumerate(settings):
        pair = torch.cat([logits[i:i + 1], logits[batch + i:batch + i + 1]])
        v = None if values is None else values.row(i)
        scale = s.guidance_scale if v is None else v.guidance
        guided = guide(pair, scale) if s.uses_cfg else pair[:1]
        row_noise = None if noise is None or s.temperature == 0.0 else noise[i * books:(i + 1) * books]
        out.append(draw(guided, s, row_noise, v))
    return torch.cat(out)


def draw_every_stage(logits: torch.Tensor, b: SamplingBuffers) -> torch.Tensor:
    """The graph form of ``draw_cfg``: every stage runs, switched by device tensors."""
    cond = logits.chunk(2, dim=0)[0]
    guided = torch.where(b.use_cfg, guide(logits, b.guidance), cond).float()
    greedy = guided.argmax(dim=-1)
    scaled = guided / b.temperature
    vocab = scaled.shape[-1]
    ordered = torch.sort(scaled, descending=True, dim=-1).values
    kth = ordered.gather(-1, (b.top_k - 1).clamp(0, vocab - 1).expand(*scaled.shape[:-1], 1))
    scaled = scaled.masked_fill((b.top_k > 0) & (scaled < kth), -math.inf)
    scaled = scaled.masked_fill((b.top_p > 0) & _nucleus_drop(scaled, b.top_p), -math.inf)
    return torch.where(b.greedy, greedy, race(scaled.softmax(dim=-1), b.noise))
