"""CLAP zero-shot scores: how much a clip sounds like each of a concept's labels.

``ClapScorer`` loads transformers' ``ClapModel`` and ``ClapProcessor`` with
``from_pretrained`` from a hub id (e.g. ``laion/clap-htsat-unfused``) or a folder.
``tiny`` builds a small CLAP with random weights and a byte-level tokenizer in code,
for the tests and for offline plumbing; its scores are meaningless, the code path is
the real one. ``save_tiny_clap`` writes it to a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pedalboard.io import StreamResampler
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    RobertaTokenizerFast,
)

from steering_core.model.loading import ModelLoadError, _quiet_transformers
from steering_core.scoped import seeded

_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def tiny_clap(seed: int = 0) -> tuple[ClapModel, ClapProcessor]:
    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = RobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                     model_max_length=64)
    text = ClapTextConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=37, max_position_embeddings=80, projection_dim=16, pad_token_id=1)
    # hidden_size is the audio encoder's last stage: patch_embeds_hidden_size * 2 ** (stages - 1).
    audio = ClapAudioConfig(hidden_size=64, patch_embeds_hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                            projection_dim=16, num_hidden_layers=2, num_mel_bins=64, spec_size=256, window_size=8)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    with seeded(seed):  # the same weights as a global manual_seed, without touching the caller's RNG
        model = ClapModel(config).eval()
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tokenizer)
    return model, processor


def save_tiny_clap(folder: str | Path) -> Path:
    folder = Path(folder)
    model, processor = tiny_clap()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class ClapScorer:
    def __init__(self, spec: str = "tiny", device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.model: Any
        self.processor: Any
        if spec == "tiny":
            self.model, self.processor = tiny_clap()
        else:
            try:
                with _quiet_transformers():
                    self.model = ClapModel.from_pretrained(spec, local_files_only=Path(spec).exists()).eval()
                    self.processor = ClapProcessor.from_pretrained(spec, local_files_only=Path(spec).exists())
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load CLAP {spec!r}: {str(exc).splitlines()[0]} (offline? pass a "
                                     f"folder, or --clap tiny for plumbing only)") from None
        self.model.to(device)
        self.device = torch.device(device)
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)

    @torch.inference_mode()
    def scores(self, clips: Sequence[np.ndarray], sample_rate: int, labels: Sequence[str]) -> np.ndarray:
        """Softmax over ``labels`` per clip: [clips, labels]."""
        audio = [self._resample(np.atleast_2d(c).mean(axis=0), sample_rate) for c in clips]
        inputs = self.processor(text=list(labels), audio=audio, sampling_rate=self.sample_rate, return_tensors="pt",
                                padding=True)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.logits_per_audio.softmax(dim=-1).float().cpu().numpy()

    def _resample(self, mono: np.ndarray, rate: int) -> np.ndarray:
        if rate == self.sample_rate:
            return mono.astype(np.float32)
        resampler = StreamResampler(rate, self.sample_rate, 1)
        x = np.ascontiguousarray(mono[None].astype(np.float32))
        return np.concatenate([resampler.process(x), resampler.process(None)], axis=1)[0]
