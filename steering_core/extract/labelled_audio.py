"""Activations from labelled audio (Panda et al.): a folder per class, teacher-forced.

``data/<class>/*.wav|flac|mp3|...``: each file is read through pedalboard.io, mixed to
mono, resampled to the model's rate and cut into windows (10 s by default). Each
window is encoded with the model's own EnCodec, and its codes are teacher-forced
through the decoder in MusicGen's delay layout, with an optional text prompt (none
by default: the unconditional branch, zero encoder states, as CFG's other half).
Activations at every layer are pooled per window.

Pooled activations are cached on disk, keyed by the file's bytes, the model
configuration, site, window, prompt and pooling, so re-analysis is cheap.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pedalboard.io import AudioFile
from tqdm import tqdm

from steering_core import paths
from steering_core.errors import UserError
from steering_core.extract.extraction import recording
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.sites import SITES

log = logging.getLogger("steerbridge.labelled")

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".m4a")
MIN_WINDOW_S = 1.0


class DataError(UserError):
    """A labelled-audio folder that cannot be used."""


@dataclass
class LabelledActivations:
    activations: torch.Tensor  # [N windows, num_layers, d_model]
    labels: list[str]  # class per window
    classes: list[str]
    sources: list[str]  # "file#window" per row
    files: list[int]  # source file index per row (windows of one file share a fold)

    def split(self, positive: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        for name in (positive, negative):
            if name not in self.classes:
                raise DataError(f"no class {name!r} in the data (classes: {', '.join(self.classes)})")
        labels = np.array(self.labels)
        return (self.activations[torch.from_numpy(labels == positive)],
                self.activations[torch.from_numpy(labels == negative)])


def discover(folder: str | Path) -> dict[str, list[Path]]:
    """class name -> audio files, from one sub-folder per class."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder (expected one sub-folder of audio files per class)")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if files:
            classes[sub.name] = files
    if len(classes) < 2:
        raise DataError(f"--data {root}: need at least two class folders with audio files, found {list(classes)}")
    return classes


def read_mono(path: Path, sample_rate: int) -> np.ndarray:
    try:
        with AudioFile(str(path)).resampled_to(float(sample_rate)) as f:
            audio = f.read(f.frames)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"cannot read audio {path}: {exc}") from None
    return audio.mean(axis=0).astype(np.float32)


def windows(audio: np.ndarray, sample_rate: int, seconds: float) -> list[np.ndarray]:
    """Consecutive windows; a short tail is kept if it is at least a second long."""
    size = int(seconds * sample_rate)
    out = [audio[i:i + size] for i in range(0, len(audio), size)]
    return [w for w in out if len(w) >= MIN_WINDOW_S * sample_rate]


@torch.inference_mode()
def encode_codes(handle: MusicGenHandle, audio: np.ndarray) -> torch.Tensor:
    """Mono audio at the model rate -> codes [1, K, T] from the model's own EnCodec."""
    codec = handle.model.audio_encoder
    x = torch.from_numpy(audio)[None, None].to(handle.device, next(codec.parameters()).dtype)
    encoded = codec.encode(x, bandwidth=handle.model.config.audio_encoder.target_bandwidths[-1])
    codes = encoded.audio_codes[0]  # [1, K per channel, T]
    if handle.audio_channels == 2:  # mono audio into a stereo model: the same codes left and right, interleaved
        codes = codes.repeat_interleave(2, dim=1)
    return codes.reshape(1, handle.num_codebooks, -1)


def delayed_inputs(handle: MusicGenHandle, codes: torch.Tensor) -> torch.Tensor:
    """codes [1, K, T] -> decoder inputs [K, T + 1] in the delay layout: position p holds
    frame p - 1 - d(k) of codebook k (d(k) = k, or k // 2 for stereo's interleaved
    codebooks), with BOS (the pad id) outside the clip."""
    k = torch.arange(handle.num_codebooks, device=codes.device)[:, None] // handle.audio_channels
    p = torch.arange(codes.shape[2] + 1, device=codes.device)[None, :]
    frame = p - 1 - k
    valid = (frame >= 0) & (frame < codes.shape[2])
    gathered = codes[0].gather(1, frame.clamp(0, codes.shape[2] - 1))
    return torch.where(valid, gathered, torch.full_like(gathered, handle.pad_token_id))


@torch.inference_mode()
def window_activations(handle: MusicGenHandle, codes: torch.Tensor, *, site: str, prompt: str | None,
                       pool: str = "mean") -> torch.Tensor:
    """Teacher-force one window; pooled activations [num_layers, d_model]."""
    if prompt:
        states, mask = handle.encode_text([prompt])
    else:
        states, mask = handle.encode_text([""])
        states, mask = torch.zeros_like(states), torch.zeros_like(mask)
    with recording(handle, site, 1, pool, range(handle.num_layers)) as pools:
        handle.model.decoder(input_ids=delayed_inputs(handle, codes), encoder_hidden_states=states,
                             encoder_attention_mask=mask, use_cache=False)
    return torch.stack([p.value()[0] for p in pools])


def collect_labelled(handle: MusicGenHandle, folder: str | Path, *, site: str = "resid_post",
                     window_s: float = 10.0, prompt: str | None = None, pool: str = "mean",
                     cache: str | Path | None = None, progress: bool = True) -> LabelledActivations:
    if site not in SITES:
        raise DataError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if not window_s >= MIN_WINDOW_S:
        raise DataError(f"--window must be at least {MIN_WINDOW_S} s")
    trained_s = handle.window_frames / handle.frame_rate
    if window_s > trained_s:  # positions past the trained window were never seen: their activations mean little
        log.info("--window %.1f s is longer than %s's trained window; using %.1f s", window_s, handle.model_id, trained_s)
        window_s = trained_s
    classes = discover(folder)
    cache_dir = Path(cache) if cache is not None else paths.cache_dir("activations")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The shape fingerprint says which vectors fit; the weights decide the activations (a
    # retrained toy has the same shape).
    setting = f"{handle.config_sha256}|{handle.weights_sha256}|{site}|{window_s}|{prompt or ''}|{pool}".encode()
    rows: list[torch.Tensor] = []
    labels: list[str] = []
    sources: list[str] = []
    file_ids: list[int] = []
    files = [(label, path) for label, paths in classes.items() for path in paths]
    hits = 0
    for index, (label, path) in enumerate(tqdm(files, desc="labelled audio", unit="file", disable=not progress)):
        key = hashlib.sha256(setting + path.read_bytes()).hexdigest()
        cached = cache_dir / f"{key}.npy"
        if cached.is_file():
            acts = torch.from_numpy(np.load(cached, allow_pickle=False))
            hits += 1
        else:
            parts = windows(read_mono(path, handle.sample_rate), handle.sample_rate, window_s)
            if not parts:
                log.warning("%s is shorter than %.0f s; skipped", path, MIN_WINDOW_S)
                continue
            acts = torch.stack([window_activations(handle, encode_codes(handle, w), site=site, prompt=prompt,
                                                   pool=pool) for w in parts])
            tmp = cached.with_suffix(".tmp.npy")
            np.save(tmp, acts.numpy(), allow_pickle=False)
            tmp.replace(cached)
        rows.append(acts)
        labels += [label] * len(acts)
        sources += [f"{path.name}#{i}" for i in range(len(acts))]
        file_ids += [index] * len(acts)
    if hits:
        log.info("activations: %d of %d files from the cache (%s)", hits, len(files), cache_dir)
    if not rows:
        raise DataError(f"--data {folder}: no usable audio")
    return LabelledActivations(torch.cat(rows), labels, list(classes), sources, file_ids)

