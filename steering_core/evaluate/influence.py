"""Layer influence: how far steering one layer alone moves the model's predictions.

Probe accuracy (``evaluate/probes.py``) says where a concept can be *read*; influence says where
*writing* it acts, in the spirit of Facchiano et al.'s layer-by-layer interventions. For
each layer on its own, the concept's direction is added at ``alpha`` while the decoder
is teacher-forced on fixed token sequences (music the unsteered model made from the
prompt), and the influence is the mean KL divergence of the steered next-token
distributions from the plain ones, over every codebook and position. Teacher forcing
keeps both sides on identical inputs, so the figure is deterministic and needs no audio.

A direction the network cannot see has no influence: MusicGen's decoder is pre-LayerNorm,
so a constant vector added to the residual stream is removed by every LayerNorm that
reads it (the tests use this as an independent check).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from steering_core.extract.labelled_audio import delayed_inputs
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings


def teacher_forced_logits(handle: MusicGenHandle, codes: torch.Tensor, prompt: str) -> torch.Tensor:
    """The decoder over one clip of codes [1, K, T], conditioned on ``prompt``:
    log-probabilities [K, T + 1, V] for every codebook and position."""
    states, mask = handle.encode_text([prompt])
    logits = handle.model.decoder(input_ids=delayed_inputs(handle, codes), encoder_hidden_states=states,
                                  encoder_attention_mask=mask, use_cache=False).logits
    return logits.float().reshape(handle.num_codebooks, -1, logits.shape[-1]).log_softmax(dim=-1)


def mean_kl(steered: torch.Tensor, plain: torch.Tensor) -> float:
    """KL(steered || plain) per distribution, averaged; both are log-probabilities [..., V]."""
    return float((steered.exp() * (steered - plain)).sum(dim=-1).mean())


@torch.inference_mode()
def layer_influence(handle: MusicGenHandle, directions: torch.Tensor, alpha: float, *, prompt: str,
                    frames: int = 50, seeds: Sequence[int] = (0, 1), site: str = "resid_post",
                    layers: Sequence[int] | None = None, progress: bool = True) -> list[float]:
    """Mean KL per layer when ``directions[layer]`` alone is added at ``alpha``.

    ``directions`` is [num_layers, d_model]; rows are used as given (unit rows make
    layers comparable). Returns one value per entry of ``layers`` (default: all)."""
    layers = list(range(handle.num_layers)) if layers is None else list(layers)
    settings = SamplingSettings(guidance_scale=3.0, top_k=250)
    clips = [MusicStream(handle, prompt, seed=seed, settings=settings).generate_frames(frames).clone()
             for seed in seeds]
    plain = [teacher_forced_logits(handle, codes, prompt) for codes in clips]
    out = []
    for layer in tqdm(layers, desc="layer influence", unit="layer", disable=not progress):
        vector = SteeringVector(concept="influence", directions=directions[layer:layer + 1].float().cpu(),
                                layers=(layer,), site=site)
        steerer = Steerer(handle)
        steerer.add(vector, alpha=alpha, cfg_mode="both")  # one conditional row: steer it whatever the mode
        with steerer.installed():
            kls = [mean_kl(teacher_forced_logits(handle, codes, prompt), p) for codes, p in zip(clips, plain, strict=True)]
        out.append(sum(kls) / len(kls))
    return out


__all__ = ["layer_influence", "mean_kl", "teacher_forced_logits"]
