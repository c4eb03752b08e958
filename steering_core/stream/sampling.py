"""Turning the decoder's logits into the next tokens: CFG, temperature, top-k, top-p.

``SamplingSettings`` may change between any two frames; ``sample`` reads it fresh each
step. Sampling draws from an explicit ``torch.Generator`` so a seed fixes the music.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from steering_core.errors import UserError


@dataclass
class SamplingSettings:
    guidance_scale: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0  # 0 disables nucleus sampling

    def validate(self) -> None:
        if not (math.isfinite(self.guidance_scale) and 0.0 <= self.guidance_scale <= 20.0):
            raise UserError(f"guidance must be in 0..20, got {self.guidance_scale}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 5.0):
            raise UserError(f"temperature must be in 0..5 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise UserError(f"top_k must be a whole number >= 0, got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0.0 <= self.top_p <= 1.0):
            raise UserError(f"top_p must be in 0..1, got {self.top_p}")

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a CFG batch [2B, ...]: conditional rows first."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def sample(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """logits [..., V] (already guided) -> token ids [...]."""
    logits = logits.float()
    if settings.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    vocab = logits.shape[-1]
    if 0 < settings.top_k < vocab:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if 0.0 < settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) > settings.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, vocab)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
