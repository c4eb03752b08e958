"""The built-in ``tiny`` MusicGen: a real MusicGen architecture, small and offline.

It exists so that every code path (loading, steering, extraction, streaming,
the live bridge) runs on a machine with no network and no weights. The weights
are random but seeded, so two processes build the very same model. Random
weights make noise, not music; the mechanics are what it exercises.

The tokenizer is byte-level and built from code, so it needs no download either.
``save_tiny`` writes model, tokenizer and generation config to a folder that
``load_model`` reads back through the same ``from_pretrained`` path as a real
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from steering_core.scoped import seeded, torch_threads

TINY_SEED = 1234
#: The tiny model's "trained window": short, so that endless-generation tests stay fast.
TINY_WINDOW_FRAMES = 250
TINY_CODEBOOK_SIZE = 128

_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0-2 are pad, eos and unk; byte b is id b + 3."""
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    for symbol in sorted(byte_symbols):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def tiny_config(stereo: bool = False) -> MusicgenConfig:
    """A MusicGen configuration with the real layout (T5 text encoder, 32 kHz EnCodec
    with 4 codebooks at 50 Hz, delay-pattern decoder), scaled down to run fast on a CPU.
    ``stereo``: as musicgen-stereo, 8 interleaved codebooks (left/right per level)
    over the same mono codec."""
    # decoder_start_token_id reaches T5Config through **kwargs; its typed fields omit it.
    text = T5Config(  # type: ignore[call-arg]
        vocab_size=len(_SPECIAL_TOKENS) + 256,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        upsampling_ratios=[8, 5, 4, 4],  # hop 640 samples -> 50 frames/s, as in musicgen
        codebook_size=TINY_CODEBOOK_SIZE,
        codebook_dim=16,
        num_lstm_layers=1,
        num_residual_layers=1,
        target_bandwidths=[1.4],  # 50 Hz x log2(128) bits x 4 codebooks = 1.4 kbps -> 4 codebooks
        normalize=False,
        use_causal_conv=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=TINY_CODEBOOK_SIZE,
        max_position_embeddings=2048,
        num_hidden_layers=4,
        ffn_dim=128,
        num_attention_heads=4,
        hidden_size=64,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=TINY_CODEBOOK_SIZE,
        bos_token_id=TINY_CODEBOOK_SIZE,
        dropout=0.0,
    )
    config = MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict()
    )
    config.decoder_start_token_id = TINY_CODEBOOK_SIZE
    config.pad_token_id = TINY_CODEBOOK_SIZE
    config.name_or_path = "tiny-stereo" if stereo else "tiny"
    return config


def tiny_generation_config() -> GenerationConfig:
    return GenerationConfig(
        decoder_start_token_id=TINY_CODEBOOK_SIZE,
        pad_token_id=TINY_CODEBOOK_SIZE,
        bos_token_id=TINY_CODEBOOK_SIZE,
        do_sample=True,
        guidance_scale=3.0,
        max_length=TINY_WINDOW_FRAMES,
        top_k=50,
    )


def randomize_codebooks(model: Any, generator: torch.Generator) -> None:
    """As ``_randomize_codebooks``, on one CPU thread: a float sum's order depends on the
    thread count, and these weights must come out the same in every process (a serve
    with one torch thread, a test run with two)."""
    with torch_threads(1):
        _randomize_codebooks(model, generator)


def _randomize_codebooks(model: Any, generator: torch.Generator) -> None:
    """EnCodec keeps its codebooks in buffers that start at zero and come from a
    checkpoint; with random weights every code would decode to the same sound, and
    every input would encode to the same code. Initialise them as EnCodec's own
    training does, from data: each residual stage's entries are drawn from the
    encoder's (residual) embeddings of a few probe sounds (noise, tones, clicks), so
    different audio gets different codes and every code sounds different."""
    codec = model.audio_encoder
    rate = int(model.config.audio_encoder.sampling_rate)
    t = torch.arange(rate, dtype=torch.float32) / rate
    probes = [0.3 * torch.randn(rate, generator=generator) * (0.2 + k / 4) for k in range(4)]
    probes += [0.3 * torch.sin(2 * torch.pi * f * t) for f in (55, 110, 220, 440, 880, 1760, 3520, 7040)]
    clicks = torch.zeros(rate)
    clicks[:: rate // 8] = 1.0
    probes.append(clicks)
    x = torch.stack(probes)[:, None].to(next(codec.parameters()).dtype)
    x = x.expand(-1, int(model.config.audio_encoder.audio_channels), -1)
    residual = codec.encoder(x).transpose(1, 2).reshape(-1, codec.config.hidden_size).float()
    # Random encoder weights give tiny embeddings that all point one way, which the random
    # decoder turns into near-identical sound whatever the code. Standardise the encoder's
    # last (linear) conv per output channel, so embeddings are centred with unit spread per
    # dimension, as trained ones roughly are.
    last = codec.encoder.layers[-1].conv
    mean, std = residual.mean(dim=0), residual.std(dim=0).clamp_min(1e-8)
    magnitudes = [p for n, p in last.named_parameters() if n.endswith("original0")]
    for param in magnitudes or [last.weight]:  # weight-normed: scale each channel's magnitude
        param.div_(std.view(-1, *([1] * (param.ndim - 1))).to(param.dtype))
    if last.bias is not None:
        last.bias.sub_(mean.to(last.bias.dtype)).div_(std.to(last.bias.dtype))
    else:
        raise ValueError("codec encoder has no output bias to centre")
    residual = (residual - mean) / std
    for layer in codec.quantizer.layers:
        embed = layer.codebook.embed
        pick = torch.randint(len(residual), (embed.shape[0],), generator=generator)
        jitter = torch.randn(embed.shape, generator=generator) * (0.05 * residual.std())
        values = residual[pick] + jitter
        embed.copy_(values.to(embed.device, embed.dtype))
        layer.codebook.embed_avg.copy_(embed)
        residual = residual - values[torch.cdist(residual, values).argmin(dim=1)]
    _standardise_decoder(codec, generator)


def _standardise_decoder(codec: Any, generator: torch.Generator) -> None:
    """A random decoder's output is mostly one fixed waveform (its biases, pushed
    through every layer) with the codes moving it by a hair. Zero its biases and
    rescale its last (linear) conv so the code-driven sound sits at 0.1 RMS: different
    codes, different sound, which is what steering on a random model needs to be heard."""
    for name, param in codec.decoder.named_parameters():
        if name.endswith("bias") or "bias_" in name:  # conv and LSTM biases: the fixed waveform
            param.zero_()
    size = int(codec.config.codebook_size)
    stages = len(codec.quantizer.layers)
    codes = torch.randint(0, size, (1, 8, stages, 50), generator=generator)
    outs = torch.stack([codec.decode(codes[:, i:i + 1].transpose(0, 1), [None]).audio_values.float().flatten()
                        for i in range(codes.shape[1])])
    offset = outs.mean()
    spread = (outs - outs.mean(dim=0)).std().clamp_min(1e-8)
    scale = float(0.1 / spread)
    last = codec.decoder.layers[-1].conv
    magnitudes = [p for n, p in last.named_parameters() if n.endswith("original0")]
    for param in magnitudes or [last.weight]:
        param.mul_(scale)
    if last.bias is not None:
        last.bias.sub_(offset.to(last.bias.dtype)).mul_(scale)


def build_tiny_model(seed: int = TINY_SEED, stereo: bool = False) -> MusicgenForConditionalGeneration:
    """The tiny model with seeded random weights: identical in every process."""
    with seeded(seed):
        model = MusicgenForConditionalGeneration(tiny_config(stereo))
    with torch.no_grad():
        randomize_codebooks(model, torch.Generator().manual_seed(seed))
    model.generation_config = tiny_generation_config()
    return model.eval()


def save_tiny(folder: str | Path, seed: int = TINY_SEED) -> Path:
    """Write the tiny model, its tokenizer and generation config to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_model(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
