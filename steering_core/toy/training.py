"""Training the ``toy`` MusicGen from scratch on the synthetic world (``toy/world.py``).

Two stages, each resumable from its last checkpoint, each seeded so a rerun makes the
same weights (on the same torch build and thread count):

1. **codec** (``train_codec``): the codebooks are fixed (``toy.codebook_vectors``). The
   encoder learns to put each 20 ms frame of world audio nearest the entries of its
   four world codes (a cross-entropy over the negative distances, which is what the
   quantiser's nearest-entry choice reads); the decoder learns to render the sum of
   the four entries back to the frame's audio (L1 on the waveform plus a
   multi-resolution STFT distance). Half the training clips are real scores, half are
   codes shuffled frame by frame, so the decoder renders any code sequence, not only
   the world's likely ones.
2. **language model** (``train_lm``): the T5 text encoder, its projection and the
   decoder learn to predict the world's codes from captions, in MusicGen's delay
   layout, with 15 % of captions dropped (zero states, fully masked) so classifier-free
   guidance has an unconditional branch to contrast with.

``train_toy`` runs both and writes the model folder; ``steerbridge toy train`` is its CLI.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import MusicgenForConditionalGeneration

from steering_core.scoped import torch_threads
from steering_core.toy import captions
from steering_core.toy import model as toy
from steering_core.toy import world as toyworld

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    codec_steps: int = 6000
    codec_batch: int = 8
    codec_frames: int = 16
    lm_steps: int = 2400
    lm_batch: int = 12
    lm_frames: int = toy.TOY_WINDOW_FRAMES
    #: Every other step trains on many short clips: a caption decides most at a clip's start
    #: (the first hits' spacing, the first notes' shade), and short clips have more starts.
    lm_short_batch: int = 48
    lm_short_frames: int = 40
    #: Then a phase on short clips with the drum codebook's loss weighted up. Brightness is
    #: chosen afresh at every note, so captions shape it from the start; tempo is chosen once
    #: (the first gap between hits) and then copied from the music, so its caption signal is
    #: a sliver of the loss and the first phase learns to ignore it.
    lm_tempo_steps: int = 600
    lm_tempo_batch: int = 64
    lm_tempo_frames: int = 32
    lm_tempo_lr: float = 1e-3
    drum_weight: float = 5.0
    lm_lr: float = 2e-3
    codec_lr: float = 3e-3
    caption_dropout: float = 0.15
    checkpoint_every: int = 100
    seed: int = toy.TOY_SEED


# --- losses ---------------------------------------------------------------------------------------
def multires_stft_distance(pred: torch.Tensor, target: torch.Tensor,
                           sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> torch.Tensor:
    """Mean over FFT sizes of spectral convergence plus log-magnitude L1 (Yamamoto et al.),
    the usual reconstruction figure for neural codecs. Inputs [B, samples]."""
    total = pred.new_zeros(())
    for n in sizes:
        window = torch.hann_window(n, device=pred.device)
        p = torch.stft(pred, n, n // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
        t = torch.stft(target, n, n // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
        convergence = (t - p).norm() / t.norm().clamp_min(1e-5)
        total = total + convergence + (t.log() - p.log()).abs().mean()
    return total / len(sizes)


def _code_logits(latent: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """latent [B, D, T], entries [K, V, D] -> [B, K, V, T]: minus squared distance of each
    codebook's slice of the latent to each of its entries (entries are zero off their slice)."""
    k = vectors.shape[0]
    slices = latent.reshape(latent.shape[0], k, -1, latent.shape[-1])  # [B, K, D/K, T]
    per_slice = vectors.reshape(k, vectors.shape[1], k, -1)[torch.arange(k), :, torch.arange(k)]  # [K, V, D/K]
    dots = torch.einsum("bksT,kvs->bkvT", slices, per_slice)
    return 2 * dots - (per_slice ** 2).sum(-1)[None, :, :, None] - (slices ** 2).sum(2, keepdim=True)


# --- data -------------------------------------------------------------------------------------------
def codec_batch(rng: random.Random, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [B, K, T], audio [B, T * HOP]) of world scores, half of them shuffled per frame."""
    tables = toyworld.frame_tables()
    codes = []
    for i in range(batch):
        _, c, _ = captions.training_example(rng, frames)
        if i % 2:
            c = np.stack([row[np.array([rng.randrange(frames) for _ in range(frames)])] for row in c])
        codes.append(c)
    stacked = np.stack(codes)
    audio = np.stack([tables.render(c) for c in stacked])
    return torch.from_numpy(stacked), torch.from_numpy(audio)


def lm_batch(rng: random.Random, batch: int, frames: int) -> tuple[list[str], torch.Tensor]:
    texts, codes = [], []
    for _ in range(batch):
        text, c, _ = captions.training_example(rng, frames)
        texts.append(text)
        codes.append(c)
    return texts, torch.from_numpy(np.stack(codes))


def delay_layout(codes: torch.Tensor, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [B, K, T] -> (inputs [B, K, T + 1], targets [B, K, T + 1]) in MusicGen's delay
    layout: position p holds frame p - 1 - k of codebook k and predicts frame p - k; -100
    marks targets outside the clip (as ``labelled.delayed_inputs`` and ``MusicStream``)."""
    b, k, t = codes.shape
    p = torch.arange(t + 1)[None, :]
    kk = torch.arange(k)[:, None]

    def take(frame: torch.Tensor, fill: int) -> torch.Tensor:
        valid = (frame >= 0) & (frame < t)
        gathered = codes.gather(2, frame.clamp(0, t - 1).expand(b, -1, -1))
        return torch.where(valid, gathered, torch.full_like(gathered, fill))

    return take(p - 1 - kk, bos), take(p - kk, -100)


# --- checkpoints ----------------------------------------------------------------------------------
def _save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     losses: list[float]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "losses": losses}, tmp)
    tmp.replace(path)  # a stopped run never leaves half a checkpoint


def _load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[float]]:
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and numbers only: no pickle code
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resuming %s at step %d", path.name, state["step"])
    return int(state["step"]), list(state["losses"])


def _cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _run(name: str, total: int, step: int, losses: list[float], one_step: Callable[[int], float],
         save: Callable[[int], None], every: int, progress: bool) -> list[float]:
    bar = tqdm(total=total, initial=step, desc=name, unit="step", disable=not progress)
    try:
        while step < total:
            losses.append(one_step(step))
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
            if step % every == 0 or step == total:
                save(step)
    finally:  # a stopped run too: the bar ends its line, so what is said next starts a fresh one
        bar.close()
    return losses


# --- stage 1: the codec -----------------------------------------------------------------------------
def train_codec(model: Any, settings: TrainSettings, checkpoint: Path,
                progress: bool = True) -> list[float]:
    codec = model.audio_encoder
    vectors = toy.codebook_vectors(torch.Generator().manual_seed(settings.seed))
    for layer, v in zip(codec.quantizer.layers, vectors, strict=True):
        layer.codebook.embed.copy_(v)
        layer.codebook.embed_avg.copy_(v)
    params = list(codec.encoder.parameters()) + list(codec.decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.codec_lr, weight_decay=0.0)
    step, losses = _load_checkpoint(checkpoint, codec, optimizer)
    codec.train()

    def one_step(i: int) -> float:
        rng = random.Random(settings.seed * 1000003 + i)  # the batch depends on the step alone: resumable
        codes, audio = codec_batch(rng, settings.codec_batch, settings.codec_frames)
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(i, settings.codec_steps, settings.codec_lr)
        latent = codec.encoder(audio[:, None])[..., : settings.codec_frames]
        logits = _code_logits(latent, vectors)  # [B, K, V, T]
        encoder_loss = F.cross_entropy(logits.transpose(1, 2), codes)
        summed = cast(torch.Tensor, sum(vectors[k][codes[:, k]] for k in range(vectors.shape[0])))  # [B, T, D]
        target_latent = summed.transpose(1, 2)  # [B, D, T]
        out = codec.decoder(target_latent)[:, 0, : audio.shape[-1]]
        decoder_loss = F.l1_loss(out, audio) * 10 + multires_stft_distance(out, audio)
        loss = encoder_loss + decoder_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    losses = _run("codec", settings.codec_steps, step, losses, one_step,
                  lambda s: _save_checkpoint(checkpoint, codec, optimizer, s, losses), settings.checkpoint_every, progress)
    codec.eval()
    return losses


# --- stage 2: the language model -------------------------------------------------------------------
def _lm_parameters(model: MusicgenForConditionalGeneration) -> list[torch.nn.Parameter]:
    parts = [model.text_encoder, model.decoder]
    if hasattr(model, "enc_to_dec_proj"):
        parts.append(model.enc_to_dec_proj)
    return [p for part in parts for p in part.parameters()]


def lm_loss(model: Any, tokenizer, captions: list[str], codes: torch.Tensor,
            drop: torch.Tensor | None = None, codebook_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-code cross-entropy over every codebook and position of ``codes`` [B, K, T]: the
    mean, or with ``codebook_weights`` [K] the weighted mean."""
    batch = tokenizer(captions, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    if drop is not None:  # dropped captions: zero states, fully masked (as the stream's CFG branch)
        mask = mask * (~drop)[:, None].long()
    states = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if hasattr(model, "enc_to_dec_proj"):
        states = model.enc_to_dec_proj(states)
    states = states * mask[..., None].to(states.dtype)
    inputs, targets = delay_layout(codes, model.config.decoder.pad_token_id)
    logits = model.decoder(input_ids=inputs.reshape(-1, inputs.shape[-1]), encoder_hidden_states=states,
                           encoder_attention_mask=mask, use_cache=False).logits  # [B, K, T + 1, V]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                reduction="none").reshape(targets.shape)
    weights = (targets != -100).float()
    if codebook_weights is not None:
        weights = weights * codebook_weights[None, :, None]
    return (per_token * weights).sum() / weights.sum()


def train_lm(model: MusicgenForConditionalGeneration, settings: TrainSettings, checkpoint: Path,
             progress: bool = True) -> list[float]:
    tokenizer = toy.toy_tokenizer()
    params = _lm_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=settings.lm_lr, weight_decay=0.01, betas=(0.9, 0.95))
    holder = torch.nn.ModuleList([model.text_encoder, model.decoder]
                                 + ([model.enc_to_dec_proj] if hasattr(model, "enc_to_dec_proj") else []))
    step, losses = _load_checkpoint(checkpoint, holder, optimizer)
    model.train()

    tempo_weights = torch.ones(toyworld.NUM_CODEBOOKS)
    tempo_weights[toyworld.DRUMS] = settings.drum_weight

    def one_step(i: int) -> float:
        rng = random.Random(settings.seed * 7919 + i)
        weights = None
        if i >= settings.lm_steps:  # phase 2: tempo
            captions, codes = lm_batch(rng, settings.lm_tempo_batch, settings.lm_tempo_frames)
            lr = _cosine_lr(i - settings.lm_steps, settings.lm_tempo_steps, settings.lm_tempo_lr)
            weights = tempo_weights
        elif i % 2:
            captions, codes = lm_batch(rng, settings.lm_short_batch, settings.lm_short_frames)
            lr = _cosine_lr(i, settings.lm_steps, settings.lm_lr)
        else:
            captions, codes = lm_batch(rng, settings.lm_batch, settings.lm_frames)
            lr = _cosine_lr(i, settings.lm_steps, settings.lm_lr)
        drop = torch.tensor([rng.random() < settings.caption_dropout for _ in captions])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, tokenizer, captions, codes, drop, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    losses = _run("language model", settings.lm_steps + settings.lm_tempo_steps, step, losses, one_step,
                  lambda s: _save_checkpoint(checkpoint, holder, optimizer, s, losses), settings.checkpoint_every,
                  progress)
    model.eval()
    return losses


# --- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def codec_report(model: MusicgenForConditionalGeneration, clips: int = 8, seconds: float = 4.0,
                 seed: int = 99) -> dict[str, Any]:
    """Held-out world clips through ``decode(encode(clip))``: the multi-resolution STFT
    distance, the SNR, and how often the encoder finds the world's own code, per codebook;
    and ``decoder_snr_db``, the decoder alone on the world's own codes (what the language
    model's codes go through).
    Codes that sound the same count as one code (no encoder can tell them apart from
    audio, and they decode to the same sound): only the silent code 0 of each codebook; every
    other code of the world sounds different (``toyworld``), the drums' tempo bucket too."""
    codec = model.audio_encoder.eval()
    rng = random.Random(seed)
    frames = round(seconds * toyworld.FRAME_RATE)
    table = toyworld.frame_tables().table
    heard = torch.from_numpy(np.where(np.abs(table).max(axis=-1) > 0, np.arange(table.shape[1])[None], -1))  # [K, V]
    stft, snr, right, decoder_snr = [], [], [], []
    for _ in range(clips):
        p = toyworld.Params.random(rng)
        codes = toyworld.score(p, frames, rng)
        audio = torch.from_numpy(toyworld.frame_tables().render(codes))
        found = codec.encode(audio[None, None], bandwidth=codec.config.target_bandwidths[-1]).audio_codes[0, 0]
        out = codec.decode(found[None, None], [None]).audio_values[0, 0, : audio.numel()]
        stft.append(float(multires_stft_distance(out[None], audio[None])))
        rendered = codec.decode(torch.from_numpy(codes)[None, None], [None]).audio_values[0, 0, : audio.numel()]
        decoder_snr.append(float(10 * torch.log10(audio.pow(2).sum() / (rendered - audio).pow(2).sum().clamp_min(1e-12))))
        snr.append(float(10 * torch.log10(audio.pow(2).sum() / (out - audio).pow(2).sum().clamp_min(1e-12))))
        truth = torch.from_numpy(codes)
        k = torch.arange(truth.shape[0])[:, None]
        right.append((heard[k, found[:, :frames]] == heard[k, truth]).float().mean(dim=1).numpy())
    per_codebook = np.mean(right, axis=0)
    return {"multires_stft_distance": float(np.mean(stft)), "snr_db": float(np.mean(snr)),
            "decoder_snr_db": float(np.mean(decoder_snr)),
            "code_accuracy": float(per_codebook.mean()),
            "code_accuracy_per_codebook": [round(float(a), 4) for a in per_codebook],
            "clips": clips, "seconds": seconds}


# --- both ------------------------------------------------------------------------------------------
CHILD_STOP_S = 15.0  # seconds a stopped run waits for the codec stage to exit on SIGTERM, then kills it


def _codec_stage(work: Path, settings: TrainSettings, progress: bool) -> None:
    """The codec stage on its own (a child process in a parallel run): its checkpoint is its result.

    The parent alone decides when it stops: Ctrl-C in a terminal reaches the whole process
    group, and a child that took it would print a traceback of its own; the parent stops
    it instead (``_train_toy``), and the kernel does if the parent dies unwarned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored from the start too (train_toy)
    # The parent's terminate() (or its death) comes as SIGTERM. Left to the default, it ended
    # the process on the spot, and the semaphore tqdm's lock holds stayed registered with
    # Python's resource tracker, which then warned of a leak; an exit unwinds and unlinks it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _die_with_parent()
    torch.set_num_threads(1)  # the spawned child's own process, so its setting to make
    model = toy.build_untrained_toy(settings.seed)
    train_codec(model, settings, work / "codec.pt", progress)


def _exit_on_signal(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a SIGKILL the parent cannot pass on)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _load_trained_codec(model: MusicgenForConditionalGeneration, work: Path, settings: TrainSettings) -> None:
    state = torch.load(work / "codec.pt", map_location="cpu", weights_only=True)
    if state["step"] < settings.codec_steps:
        raise RuntimeError(f"the codec stage stopped at step {state['step']} of {settings.codec_steps}")
    model.audio_encoder.load_state_dict(state["model"])
    model.audio_encoder.eval()


def train_toy(out: Path, work: Path, settings: TrainSettings | None = None, progress: bool = True,
              parallel: bool = True) -> dict[str, object]:
    """Train the toy model from scratch (or resume from ``work``) and save it to ``out``.

    The two stages share no parameters, so by default they run side by side, one torch
    thread each (the codec in a child process): on 2 cores that is faster than either
    after the other with 2 threads, and far faster when the machine is busy, where two
    threads of one process wait on each other. The weights are the same either way."""
    import multiprocessing

    settings = settings or TrainSettings()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    child = None
    if parallel:
        child = multiprocessing.get_context("spawn").Process(target=_codec_stage, args=(work, settings, progress),
                                                            name="toy-codec")
        with _sigint_ignored():  # from its first instant (an ignored signal is inherited): see _codec_stage
            child.start()
    with torch_threads(1):  # one thread per stage (see above); the caller's count after
        return _train_toy(out, work, settings, progress, child, started)


def _train_toy(out: Path, work: Path, settings: TrainSettings, progress: bool, child: BaseProcess | None,
               started: float) -> dict[str, object]:
    model = toy.build_untrained_toy(settings.seed)
    try:
        if child is None:
            train_codec(model, settings, work / "codec.pt", progress)
        lm_losses = train_lm(model, settings, work / "lm.pt", progress)
    except BaseException:  # Ctrl-C, a signal or a failure: the codec stage stops with it
        if child is not None:
            child.terminate()
            child.join(CHILD_STOP_S)
            if child.is_alive():  # its exit can stick (once seen in CI); it must not outlive the run
                log.warning("the codec stage did not stop within %.0f s of being asked: killed", CHILD_STOP_S)
                child.kill()
                child.join()
        raise
    if child is not None:
        child.join()  # the codec stage trains on after the language model is done
    if child is not None and child.exitcode != 0:
        raise RuntimeError(f"the codec stage failed (exit code {child.exitcode}); run again to resume it")
    _load_trained_codec(model, work, settings)
    codec_losses = torch.load(work / "codec.pt", map_location="cpu", weights_only=True)["losses"]
    codec_figures = codec_report(model)
    log.info("codec: held-out multi-resolution STFT distance %.3f, SNR %.1f dB, code accuracy %.3f",
             codec_figures["multires_stft_distance"], codec_figures["snr_db"], codec_figures["code_accuracy"])
    toy.save_toy(model, out)
    summary = {
        "settings": asdict(settings),
        "codec_loss": {"first": float(np.mean(codec_losses[:20])), "last": float(np.mean(codec_losses[-20:]))},
        "lm_loss": {"first": float(np.mean(lm_losses[:20])), "last": float(np.mean(lm_losses[-20:]))},
        "codec": codec_figures,
        "seconds": round(time.perf_counter() - started, 1),
        "parallel_stages": child is not None,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    return summary
