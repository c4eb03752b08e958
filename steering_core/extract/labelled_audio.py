"""Activations from labelled audio (Panda et al.): a folder per class, teacher-forced.

``data/<class>/*.wav|flac|mp3|...``: each file is read through pedalboard.io, mixed to
mono, resampled to the model's rate and cut into windows (10 s by default). Each
window is encoded with the model's own EnCodec, and its codes are teacher-forced
through the decoder in MusicGen's delay layout, with an optional text prompt (none
by default: the unconditional branch, zero encoder states, as CFG's other half).
Activations at every layer are pooled per window (``pooled_window``).

An *engine* runs that over the files and leaves one shard per file in the activation
cache (``shards.py``), keyed by the file's bytes, the model, site, window, prompt and
pooling, so re-analysis is cheap and a stopped run resumes. ``local_engine`` runs in this
process; ``ray_engine.py`` spreads the same function over a Ray cluster. A file that gives
no windows (unreadable, shorter than a second, neither mono nor stereo) is skipped and
listed, never the end of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from steering_core import paths
from steering_core.errors import UserError
from steering_core.extract.audio_windows import MIN_WINDOW_S, BadAudio, WindowPlan, file_windows, read_file
from steering_core.extract.extraction import POOLING, recording
from steering_core.extract.shards import EngineRun, ShardCache, SkippedFile
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.sites import SITES

log = logging.getLogger("steerbridge.labelled")

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".m4a")


class DataError(UserError):
    """A labelled-audio folder that cannot be used."""


@dataclass
class LabelledActivations:
    activations: torch.Tensor  # [N windows, num_layers, d_model]
    labels: list[str]  # class per window
    classes: list[str]
    sources: list[str]  # "file#window" per row
    files: list[int]  # source file index per row (windows of one file share a fold)
    skipped: list[SkippedFile] = field(default_factory=list)
    from_cache: int = 0  # files whose shard was already in the cache
    computed: int = 0  # files whose shard this run computed

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


def model_fingerprint(handle: MusicGenHandle) -> str:
    return f"{handle.config_sha256}|{handle.weights_sha256}"


def plan_windows(handle: MusicGenHandle, *, site: str = "resid_post", window_s: float = 10.0,
                 prompt: str | None = None, pool: str = "mean") -> WindowPlan:
    """The checked settings of a run on ``handle``'s model."""
    if site not in SITES:
        raise DataError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if pool not in POOLING:
        raise DataError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLING)}")
    if not window_s >= MIN_WINDOW_S:
        raise DataError(f"--window must be at least {MIN_WINDOW_S} s")
    trained_s = handle.window_frames / handle.frame_rate
    if window_s > trained_s:  # positions past the trained window were never seen: their activations mean little
        log.info("--window %.1f s is longer than %s's trained window; using %.1f s", window_s, handle.model_id, trained_s)
        window_s = trained_s
    return WindowPlan(model_fingerprint(handle), handle.sample_rate, site, window_s, prompt, pool)


def pooled_window(handle: MusicGenHandle, window: np.ndarray, plan: WindowPlan) -> torch.Tensor:
    """One window of mono audio -> its pooled activations [num_layers, d_model]: the one
    computation every engine runs."""
    return window_activations(handle, encode_codes(handle, window), site=plan.site, prompt=plan.prompt, pool=plan.pool)


#: An engine: (handle, files, plan, cache, progress) -> what it did. It leaves a shard in
#: the cache for every usable file and lists the others.
Engine = Callable[[MusicGenHandle, Sequence[Path], WindowPlan, ShardCache, bool], EngineRun]


def local_engine(handle: MusicGenHandle, files: Sequence[Path], plan: WindowPlan, cache: ShardCache,
                 progress: bool) -> EngineRun:
    """Every file in this process, one window at a time."""
    run = EngineRun()
    for path in tqdm(files, desc="labelled audio", unit="file", disable=not progress):
        try:
            data = read_file(path)
            key = plan.shard_key(data)
            if cache.has(key):
                run.from_cache += 1
            else:
                parts = file_windows(data, plan.sample_rate, plan.window_s)
                cache.save(key, torch.stack([pooled_window(handle, w, plan) for w in parts]))
                run.computed += 1
        except BadAudio as exc:
            run.skipped.append(SkippedFile(str(path), str(exc)))
            continue
        run.keys[path] = key
    return run


def collect_labelled(handle: MusicGenHandle, folder: str | Path, *, site: str = "resid_post",
                     window_s: float = 10.0, prompt: str | None = None, pool: str = "mean",
                     cache: str | Path | None = None, progress: bool = True,
                     engine: Engine = local_engine) -> LabelledActivations:
    """Pooled activations of every window of every file under ``folder``, in file order
    (classes sorted, files sorted), whichever engine computed them."""
    plan = plan_windows(handle, site=site, window_s=window_s, prompt=prompt, pool=pool)
    classes = discover(folder)
    shards = ShardCache(cache if cache is not None else paths.cache_dir("activations"))
    files = [(label, path) for label, found in classes.items() for path in found]
    run = engine(handle, [path for _, path in files], plan, shards, progress)
    rows: list[torch.Tensor] = []
    labels: list[str] = []
    sources: list[str] = []
    file_ids: list[int] = []
    for index, (label, path) in enumerate(files):
        if path not in run.keys:
            continue
        acts = shards.load(run.keys[path])
        rows.append(acts)
        labels += [label] * len(acts)
        sources += [f"{path.name}#{i}" for i in range(len(acts))]
        file_ids += [index] * len(acts)
    skipped = sorted(run.skipped, key=lambda s: s.path)
    for bad in skipped:
        log.warning("%s: %s; skipped", bad.path, bad.reason)
    if skipped:
        log.warning("skipped %d of %d files (listed above)", len(skipped), len(files))
    if run.from_cache:
        log.info("activations: %d of %d files from the cache (%s)", run.from_cache, len(files), shards.folder)
    if not rows:
        raise DataError(f"--data {folder}: no usable audio")
    return LabelledActivations(torch.cat(rows), labels, list(classes), sources, file_ids, skipped,
                               run.from_cache, run.computed)
