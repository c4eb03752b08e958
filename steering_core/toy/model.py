"""The built-in ``toy`` MusicGen: small, trained here on the synthetic world of ``toy/world.py``.

``tiny`` (``model/tiny.py``) has random weights and exercises the mechanics; ``toy`` has
concepts to find. It is a real ``MusicgenForConditionalGeneration`` (T5 text encoder,
32 kHz EnCodec with 4 codebooks of 128 codes at 50 frames/s, delay-pattern decoder),
trained by ``steerbridge toy train`` (``toy/training.py``) and shipped as a safetensors folder
inside the package (``steering_core/toy/weights/``), which ``load_model("toy")`` reads with
the same ``from_pretrained`` as any checkpoint.

Two pieces are fixed by design rather than learned:

* the **tokenizer** is word-level over every word of the shipped concept presets and
  the world's captions (``captions.vocabulary_words``): a user's prompt in those words
  means to ``toy`` what it meant in training; other words become ``<unk>``;
* the **codebooks**: codebook k's entries live in their own 16-dimensional slice of
  the codec's 64-dimensional latent, so EnCodec's residual quantiser, which picks the
  nearest entry stage by stage, picks each codebook's code from its slice alone. The
  encoder is trained to land near the world's own codes and the decoder to render them
  (``training.train_codec``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from steering_core.codec.streaming import STREAMING_CONFIG_KEY, CodecStreaming
from steering_core.model.quiet import quiet_musicgen_configs
from steering_core.scoped import seeded
from steering_core.toy import captions
from steering_core.toy import world as toyworld

quiet_musicgen_configs()  # the toy's pad token is MusicGen's extra embedding row

#: Where the trained weights ship (a folder written by ``save_pretrained``).
TOY_MODEL_DIR = Path(__file__).resolve().parent / "weights"
TOY_SEED = 20261121
#: The toy's trained window: 4 s of music, the length of its training clips (two bars at 60 BPM).
TOY_WINDOW_FRAMES = 200
LATENT_DIM = 64
#: How serve decodes the toy's codec live. Its audio is frame-local, so 4 frames of left
#: context are enough; 4-frame chunks pay a decode's fixed cost once per 80 ms. Frames held
#: back for right context: 2 tracked the old codec's one-shot decode at 35 dB, but the
#: codec trained on drums whose room tone rings through every frame leans further ahead:
#: 21 dB with 2, 27 with 3, 34 with 4 (a generated 3.2 s clip). Live rtf with the effect
#: chain (2-core CPU, idle): 1.8 with the EnCodec-32k default (1/16/6/3), 4.3 with 4/4/2/2
#: on the old codec (benchmarks/RESULTS.md, issue 10).
TOY_CODEC_STREAMING = CodecStreaming(chunk_frames=4, context_frames=4, holdback_frames=4, crossfade_frames=2)
_SLICE = LATENT_DIM // toyworld.NUM_CODEBOOKS
_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: lower-cased words and punctuation marks; unknown words are ``<unk>``."""
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for word in captions.vocabulary_words():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=128)


def toy_config(vocab_size: int) -> MusicgenConfig:
    v = toyworld.CODEBOOK_SIZE
    # decoder_start_token_id reaches T5Config through **kwargs; its typed fields omit it.
    text = T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,  # type: ignore[call-arg]
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0)
    audio = EncodecConfig(
        sampling_rate=toyworld.SAMPLE_RATE, audio_channels=1, num_filters=8, hidden_size=LATENT_DIM,
        codebook_dim=LATENT_DIM, upsampling_ratios=[8, 5, 4, 4], codebook_size=v, num_lstm_layers=1,
        num_residual_layers=1,  # 50 Hz x log2(V) bits x 4 codebooks: all four quantisers
        target_bandwidths=[toyworld.FRAME_RATE * math.log2(v) * toyworld.NUM_CODEBOOKS / 1000],
        normalize=False, use_causal_conv=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=v, max_position_embeddings=2048, num_hidden_layers=6, ffn_dim=512,
        num_attention_heads=4, hidden_size=128, num_codebooks=toyworld.NUM_CODEBOOKS, audio_channels=1,
        pad_token_id=v, bos_token_id=v, dropout=0.0, activation_function="gelu",
    )
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    config.decoder_start_token_id = v
    config.pad_token_id = v
    config.name_or_path = "toy"
    setattr(config, STREAMING_CONFIG_KEY, TOY_CODEC_STREAMING.as_dict())
    return config


def toy_generation_config() -> GenerationConfig:
    v = toyworld.CODEBOOK_SIZE
    return GenerationConfig(decoder_start_token_id=v, pad_token_id=v, bos_token_id=v, do_sample=True,
                            guidance_scale=3.0, max_length=TOY_WINDOW_FRAMES, top_k=20)


def codebook_vectors(generator: torch.Generator) -> torch.Tensor:
    """[K, V, LATENT_DIM]: codebook k's entries are random directions of length 4 inside
    latent slice k and zero elsewhere, so the quantiser's stages do not interfere."""
    k, v = toyworld.NUM_CODEBOOKS, toyworld.CODEBOOK_SIZE
    out = torch.zeros(k, v, LATENT_DIM)
    for i in range(k):
        entries = torch.randn(v, _SLICE, generator=generator)
        out[i, :, i * _SLICE:(i + 1) * _SLICE] = 4.0 * entries / entries.norm(dim=1, keepdim=True)
    return out


def build_untrained_toy(seed: int = TOY_SEED) -> MusicgenForConditionalGeneration:
    """The toy's architecture with seeded initial weights and its fixed codebooks."""
    tokenizer = toy_tokenizer()
    with seeded(seed):
        model = MusicgenForConditionalGeneration(toy_config(len(tokenizer)))
    with torch.no_grad():
        vectors = codebook_vectors(torch.Generator().manual_seed(seed))
        codec: Any = model.audio_encoder
        for i, layer in enumerate(codec.quantizer.layers):
            layer.codebook.embed.copy_(vectors[i])
            layer.codebook.embed_avg.copy_(vectors[i])
    model.generation_config = toy_generation_config()
    return model


def save_toy(model: MusicgenForConditionalGeneration, folder: str | Path) -> Path:
    """Model, tokenizer and generation config, as ``from_pretrained`` reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = toy_generation_config()
    model.save_pretrained(folder)
    toy_tokenizer().save_pretrained(folder)
    return folder
