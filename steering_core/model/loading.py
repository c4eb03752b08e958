"""Loading MusicGen: a hub id, a local folder, ``tiny``, or a real shape with random weights.

Everything goes through ``load_model``, which returns a ``MusicGenHandle``: the model,
its tokenizer and the few numbers the rest of the code needs (sample rate, frame rate,
width, layer count). A hub id or a folder is read by transformers' ``from_pretrained``;
``tiny`` is built in code (see ``model/tiny.py``); ``musicgen-small|medium|large`` build the
real configuration with random weights, for speed measurements.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoTokenizer,
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedModel,
    T5Config,
)

from steering_core.model.names import BUILTIN_MODELS, RANDOM_WEIGHT_MODELS, ModelLoadError, check_model_spec, download_fixes
from steering_core.model.quiet import loading_quietly, quiet_musicgen_configs
from steering_core.model.tiny import build_tiny_model, randomize_codebooks, tiny_tokenizer

quiet_musicgen_configs()
log = logging.getLogger(__name__)

#: Decoder shapes of the released checkpoints (facebook/musicgen-*), for random-weight builds.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    "musicgen-small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096},
    "musicgen-medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
    "musicgen-large": {"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "ffn_dim": 8192},
}
_T5_BASE: dict[str, Any] = {"d_model": 768, "d_ff": 3072, "d_kv": 64, "num_heads": 12, "num_layers": 12}
_T5_LARGE: dict[str, Any] = {"d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_heads": 16, "num_layers": 24}


#: How each built-in model (``names.BUILTIN_MODELS``) is built.
_BUILTIN_BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, Any]]] = {
    "toy": lambda: _load_toy(torch.float32),  # load_model casts to the asked dtype after
    "tiny": lambda: (build_tiny_model(stereo=False), tiny_tokenizer()),
    "tiny-stereo": lambda: (build_tiny_model(stereo=True), tiny_tokenizer()),
}
assert set(_BUILTIN_BUILDERS) == set(BUILTIN_MODELS), "each built-in model name needs a builder here"
assert set(REAL_SHAPES) == set(RANDOM_WEIGHT_MODELS), "names.RANDOM_WEIGHT_MODELS lists REAL_SHAPES"


@dataclass
class MusicGenHandle:
    """A loaded MusicGen model and what the rest of steerbridge needs to know about it."""

    #: A MusicgenForConditionalGeneration. Attribute access through a torch module tree is
    #: dynamic (torch types it ``Tensor | Module``), so the tree is ``Any`` and the typed surface
    #: is this handle's own properties.
    model: Any
    tokenizer: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    #: Frames after which the model has left the context it was trained on (30 s for musicgen).
    window_frames: int
    generation_config: GenerationConfig = field(repr=False)

    @property
    def decoder_config(self) -> MusicgenDecoderConfig:
        return self.model.config.decoder

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        cfg = self.model.config.audio_encoder
        hop = 1
        for ratio in cfg.upsampling_ratios:
            hop *= ratio
        return cfg.sampling_rate / hop

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    @property
    def d_model(self) -> int:
        return int(self.decoder_config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.decoder_config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.decoder_config.num_attention_heads)

    @property
    def num_codebooks(self) -> int:
        return int(self.decoder_config.num_codebooks)

    @property
    def audio_channels(self) -> int:
        return int(getattr(self.decoder_config, "audio_channels", 1))

    @property
    def pad_token_id(self) -> int:
        pad = self.decoder_config.pad_token_id
        if pad is None:
            raise ModelLoadError(f"{self.model_id}: the decoder's config has no pad_token_id")
        return int(pad)

    @property
    def is_melody(self) -> bool:
        return isinstance(self.model, MusicgenMelodyForConditionalGeneration)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The transformer blocks that steering hooks attach to, in order."""
        return self.model.decoder.model.decoder.layers

    @property
    def config_sha256(self) -> str:
        return config_fingerprint(self.model.config)

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of one weight tensor (the first LM head): tells two trainings of one shape
        apart (a retrained ``toy``), for caches of what the weights compute."""
        if not hasattr(self, "_weights_sha256"):
            head = self.model.decoder.lm_heads[0].weight.detach().float().cpu().numpy()
            self._weights_sha256 = hashlib.sha256(head.tobytes()).hexdigest()
        return self._weights_sha256

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> (encoder states projected to the decoder's input width, attention mask).

        Runs the text encoder once; the streaming engine and extraction reuse the result.
        """
        if self.is_melody:
            raise ModelLoadError("MusicGen-Melody conditions by prefix, not cross-attention; "
                                 "this path supports MusicGen models only.")
        batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if hasattr(self.model, "enc_to_dec_proj"):
            states = self.model.enc_to_dec_proj(states)
        states = states * mask[..., None].to(states.dtype)
        return states, mask


def config_fingerprint(config: Any) -> str:
    """SHA-256 of the fields that fix a decoder's shape: two models agree on it exactly
    when a steering vector of one fits the other's layers."""
    dec = config.decoder if hasattr(config, "decoder") else config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
            "vocab_size", "num_codebooks", "audio_channels")
    shape = {k: getattr(dec, k, None) for k in keys}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda asked for, but this torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch.")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on the CPU and bfloat16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(table)}")
    return table[dtype]


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """MusicGen's configs put pad = bos = vocab_size by design; transformers warns about it
    on every load. Silence that noise, not real errors."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def real_shape_config(name: str) -> MusicgenConfig:
    """The configuration of a released musicgen checkpoint, for a random-weight build."""
    shape = REAL_SHAPES[name]
    text = T5Config(vocab_size=32128, **(_T5_BASE if name == "musicgen-small" else _T5_LARGE))
    audio = EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, codebook_dim=128,
        upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, num_lstm_layers=2,
        num_residual_layers=1, target_bandwidths=[2.2], normalize=False, use_causal_conv=False,
    )
    decoder = MusicgenDecoderConfig(vocab_size=2048, max_position_embeddings=2048, num_codebooks=4,
                                    pad_token_id=2048, bos_token_id=2048, dropout=0.0, **shape)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                            decoder=decoder.to_dict())
    config.decoder_start_token_id = 2048
    config.pad_token_id = 2048
    config.name_or_path = name
    return config


def _real_generation_config() -> GenerationConfig:
    return GenerationConfig(decoder_start_token_id=2048, pad_token_id=2048, bos_token_id=2048,
                            do_sample=True, guidance_scale=3.0, max_length=1500, top_k=250)


def _from_pretrained(spec: str, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    check_model_spec(spec)  # a missing folder, a typo, or offline without the files: one line, at once
    try:
        # The local cache first: an offline machine with the files should not wait on retries.
        return _read_pretrained(spec, dtype, local_files_only=True)
    except OSError:
        pass
    except SafetensorError as exc:  # the files are there, and broken: the hub would not mend them
        raise ModelLoadError(f"cannot load MusicGen {spec!r}: its weights are not a valid safetensors file "
                             f"({str(exc).splitlines()[0][:160]})") from exc
    try:
        return _read_pretrained(spec, dtype, local_files_only=False)
    except ModelLoadError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:
        where = "folder" if Path(spec).exists() else "hub id"
        raise ModelLoadError(
            f"cannot load MusicGen {where} {spec!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
            + download_fixes(spec if where == "hub id" else "facebook/musicgen-small")
        ) from exc


def _read_pretrained(spec: str, dtype: torch.dtype, local_files_only: bool) -> tuple[PreTrainedModel, Any]:
    path = str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=local_files_only)
    if config.model_type not in ("musicgen", "musicgen_melody"):
        raise ModelLoadError(f"{spec!r} is a {config.model_type!r} model, not MusicGen")
    cls = (MusicgenMelodyForConditionalGeneration if config.model_type == "musicgen_melody"
           else MusicgenForConditionalGeneration)
    # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code as it loads.
    with loading_quietly():
        model = cls.from_pretrained(path, dtype=dtype, local_files_only=local_files_only, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    return model, tokenizer


def _load_toy(dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """The trained toy model shipped in the package, read like any saved checkpoint."""
    from steering_core.toy.model import TOY_MODEL_DIR

    if not (TOY_MODEL_DIR / "model.safetensors").is_file():
        raise ModelLoadError(f"the toy model's weights are missing from {TOY_MODEL_DIR}; "
                             "rebuild them with `steerbridge toy train` (about an hour on 2 CPU cores).")
    return _read_pretrained(str(TOY_MODEL_DIR), dtype, local_files_only=True)


def fold_weight_norm(module: nn.Module) -> int:
    """Bake weight-norm parametrisations into plain weights (same values, bit for bit).

    EnCodec's convolutions are weight-normed, and a parametrised weight is recomputed on
    every forward: a third of a small codec's decode time on a CPU. Inference never
    changes the weights, so compute them once. Returns how many were folded."""
    from torch.nn.utils import parametrize

    folded = 0
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            parametrizations: Any = sub.parametrizations
            for name in list(parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
                folded += 1
    return folded


def load_model(spec: str = "toy", device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto") -> MusicGenHandle:
    """Load ``toy`` (trained, built in), ``tiny`` (random, built in), ``musicgen-small|medium|large``
    (random weights), a folder or a hub id."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model: Any
    with _quiet_transformers():
        if spec in _BUILTIN_BUILDERS:
            model, tokenizer = _BUILTIN_BUILDERS[spec]()
        elif spec in REAL_SHAPES and not Path(spec).exists():
            log.warning("%s: the real configuration with RANDOM weights (speed and plumbing, no music)", spec)
            with torch.device(dev):
                model = MusicgenForConditionalGeneration(real_shape_config(spec))
            with torch.no_grad():
                randomize_codebooks(model, torch.Generator().manual_seed(0))
            model.generation_config = _real_generation_config()
            tokenizer = tiny_tokenizer()  # byte ids are valid T5 ids; random weights need no real vocabulary
        else:
            model, tokenizer = _from_pretrained(spec, dt)
    model = model.to(device=dev, dtype=dt).eval()
    fold_weight_norm(model.audio_encoder)
    gen_cfg = model.generation_config
    window = int(gen_cfg.max_length) if gen_cfg.max_length and gen_cfg.max_length > 20 else 1500
    return MusicGenHandle(model=model, tokenizer=tokenizer, model_id=spec, device=dev, dtype=dt,
                          window_frames=window, generation_config=gen_cfg)
