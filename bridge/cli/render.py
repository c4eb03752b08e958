"""``steerbridge render``: a WAV offline, steered by ``--steer``, or replayed from a serve
performance log (or a .mid of controller moves) with ``--automation``."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..live.options import DEFAULT_MODEL, DEFAULT_PROMPT, ServeOptions, torch_threads_for
from .parsing import add_command, cuda_graphs_arg, model_args
from .validators import (
    CliError,
    check_model,
    check_output_file,
    check_vector_paths,
    non_negative_float,
    non_negative_int,
    parse_steer,
    positive_float,
    positive_int,
    prompt_text,
    unit_interval,
)

if TYPE_CHECKING:  # the command line imports torch only once a command runs (``--help`` stays instant)
    from steering_core.model.loading import MusicGenHandle
    from steering_core.stream.sampling import SamplingSettings

    from .parsing import Commands

log = logging.getLogger("steerbridge.render")

#: What render falls back on without --automation; a replay takes the performance's.
DEFAULT_SECONDS = 5.0
DEFAULT_SEED = 0
#: Serve's smoothing, for a .mid automation (a performance log says its own).
DEFAULT_SMOOTHING_MS = ServeOptions.smoothing_ms


def register(sub: Commands) -> None:
    p = add_command(sub, "render", "offline generation with the streaming engine",
                    "Render a WAV offline with the same engine serve plays live, steered by --steer concept=alpha, "
                    "or replay a serve performance log (or a .mid of controller moves) with --automation. Alpha 0 is "
                    "bit-identical to no vectors.")
    model_args(p, model_default=None, model_help=f"as for extract (default: {DEFAULT_MODEL}, or the performance's "
               "model with --automation)")
    p.add_argument("--prompt", type=prompt_text, default=None,
                   help=f"text prompt (default: {DEFAULT_PROMPT!r}, or the performance's)")
    p.add_argument("--vectors", action="append", default=[], help="vector file or folder (repeatable)")
    p.add_argument("--steer", action="append", type=parse_steer, default=[], metavar="CONCEPT=ALPHA",
                   help="steer a concept from --vectors by alpha (repeatable; default: no steering)")
    p.add_argument("--automation", default=None, help="a serve performance log (.jsonl) or a .mid file to replay")
    p.add_argument("--midi-map", default=ServeOptions.midi_map, help="controller map for a .mid automation")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help=f"length in seconds (default: {DEFAULT_SECONDS:g}, or the performance's length)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"sampling seed (default: {DEFAULT_SEED}, or the performance's)")
    # No fixed defaults: serve's (SamplingSettings'), or the performance's.
    performance = " or the performance's)"
    p.add_argument("--guidance", type=non_negative_float, default=None,
                   help="classifier-free guidance scale: how closely the music follows the prompt "
                        f"(default: {ServeOptions.guidance:g},{performance}")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help=f"sampling temperature: lower is safer, higher is wilder (default: "
                        f"{ServeOptions.temperature:g},{performance}")
    p.add_argument("--top-k", type=non_negative_int, default=None,
                   help=f"sample from the k most likely tokens (0: no limit) (default: {ServeOptions.top_k},"
                        f"{performance}")
    p.add_argument("--top-p", type=unit_interval, default=None,
                   help=f"nucleus sampling threshold (0: off) (default: 0,{performance}")
    p.add_argument("--out", required=True, help="output .wav")
    p.add_argument("--threads", type=positive_int, default=ServeOptions.threads,
                   help="torch CPU threads (default: 1 for the built-in models, else torch's), as serve")
    cuda_graphs_arg(p)
    p.set_defaults(func=cmd_render)


def _load(args: argparse.Namespace, spec: str) -> MusicGenHandle:
    """The model, with serve's torch thread count for it (``--threads``)."""
    import torch

    from steering_core.model.loading import load_model

    started = time.perf_counter()
    handle = load_model(spec, args.device, args.dtype)
    threads = torch_threads_for(handle.device.type, handle.d_model, args.threads)
    if threads is not None:
        torch.set_num_threads(threads)
    log.debug("model %s on %s (%s) loaded in %.1f s; %d torch threads", spec, handle.device, handle.dtype,
              time.perf_counter() - started, torch.get_num_threads())
    return handle


def cmd_render(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    check_vector_paths(args.vectors)
    if args.model is not None:
        check_model(args.model)
    if args.automation:
        if not Path(args.automation).is_file():
            raise CliError(f"--automation {args.automation}: no such file (a serve performance log .jsonl or a .mid)")
        return _render_automation(args)
    if args.steer and not args.vectors:
        raise CliError(f"--steer {args.steer[0][0]}=... needs the --vectors file that holds {args.steer[0][0]!r}")
    seconds = DEFAULT_SECONDS if args.seconds is None else args.seconds
    from steering_core.audio import write_wav
    from steering_core.steer.vectors import load_vectors
    from steering_core.stream.render import render

    vectors = [v for path in args.vectors for v in load_vectors(path)]
    alphas = dict(args.steer)
    unknown = sorted(set(alphas) - {v.concept for v in vectors})
    if unknown:
        raise CliError(f"--steer names {', '.join(unknown)} but no --vectors file holds "
                       f"{'it' if len(unknown) == 1 else 'them'} (loaded: {', '.join(v.concept for v in vectors) or 'none'})")
    handle = _load(args, args.model or DEFAULT_MODEL)
    settings = _settings(args, {})
    seed = args.seed or DEFAULT_SEED
    started = time.perf_counter()
    audio = render(handle, args.prompt or DEFAULT_PROMPT, seconds, seed=seed, vectors=vectors, alphas=alphas,
                   settings=settings, cuda_graphs=args.cuda_graphs)
    _log_speed(seconds, time.perf_counter() - started)
    out = write_wav(args.out, audio, handle.sample_rate)
    steer = ", ".join(f"{k}={v:g}" for k, v in alphas.items()) or "no steering"
    print(f"wrote {out}: {audio.shape[-1] / handle.sample_rate:.2f} s at {handle.sample_rate} Hz, {steer}, seed {seed}")
    return 0


def _log_speed(seconds: float, took: float) -> None:
    log.debug("generated %.2f s of audio in %.1f s (rtf %.2f: audio seconds per second)", seconds, took,
              seconds / took if took else float("inf"))


def _settings(args: argparse.Namespace, base: dict[str, object]) -> SamplingSettings:
    """SamplingSettings' defaults, then ``base`` (a performance's), then the options given."""
    from steering_core.stream.settings import SamplingSettings, settings_from_controls

    return settings_from_controls(vars(args), SamplingSettings(**{**asdict(SamplingSettings()), **base}))


def _render_automation(args: argparse.Namespace) -> int:
    from steering_core.audio import write_wav
    from steering_core.steer.vectors import load_vector, load_vectors

    from ..tools.replay import midi_schedule, read_log, replay

    path = Path(args.automation)
    if args.steer:
        raise CliError("--steer and --automation do not mix: the automation sets the knobs")
    if path.suffix.lower() in (".mid", ".midi"):
        if not args.vectors:
            raise CliError("a .mid automation needs --vectors for the concepts its controller map drives")
        vectors = [v for p in args.vectors for v in load_vectors(p)]
        handle = _load(args, args.model or DEFAULT_MODEL)
        settings = _settings(args, {})
        prompt, seed = args.prompt or DEFAULT_PROMPT, args.seed or DEFAULT_SEED
        smoothing, window = DEFAULT_SMOOTHING_MS, {}
        performed = midi_schedule(path, vectors, prompt, settings, handle.frame_rate, args.midi_map,
                                  handle.decoder_config.vocab_size)
    else:
        performed = read_log(path)
        h = performed.header
        overridden = [name for name in ("prompt", "seed") if getattr(args, name) is not None]
        if overridden:
            print(f"note: --{' and --'.join(overridden)} override the performance; the replay will differ from it",
                  file=sys.stderr)
        if args.vectors:
            vectors = [v for p in args.vectors for v in load_vectors(p)]
        else:
            vectors = []
            for entry in h.get("vectors", []):
                vpath = Path(entry["path"])
                if not vpath.is_file():
                    raise CliError(f"the performance used {vpath}, which is gone; pass --vectors")
                if hashlib.sha256(vpath.read_bytes()).hexdigest() != entry.get("sha256"):
                    raise CliError(f"{vpath} changed since the performance; pass --vectors to use it anyway")
                vectors.append(load_vector(vpath))
        handle = _load(args, args.model or str(h.get("model", DEFAULT_MODEL)))
        if h.get("model_config_sha256") not in (None, handle.config_sha256):
            raise CliError("this performance was played on another model configuration; pass the same --model")
        settings = _settings(args, dict(h.get("settings", {})))
        prompt = args.prompt if args.prompt is not None else str(h.get("prompt", DEFAULT_PROMPT))
        seed = args.seed if args.seed is not None else int(h.get("seed", DEFAULT_SEED))
        smoothing = float(h.get("smoothing_ms", DEFAULT_SMOOTHING_MS))
        window = {"window_frames": h.get("window_frames"), "reprime_frames": h.get("reprime_frames")}
    if args.seconds is not None:
        frames = max(1, round(args.seconds * handle.frame_rate))
    elif performed.frames:
        frames = performed.frames
    else:
        raise CliError("the automation does not say how long it ran; pass --seconds")
    if performed.header.get("stems"):  # a set of stems: the same layout, a WAV per stem
        return _render_stems(args, handle, vectors, performed, settings, smoothing, frames, window)
    started = time.perf_counter()
    result = replay(handle, vectors, performed, prompt=prompt, seed=seed, settings=settings, smoothing_ms=smoothing,
                    frames=frames, **window)
    _log_speed(frames / handle.frame_rate, time.perf_counter() - started)
    out = write_wav(args.out, result.audio, handle.sample_rate)
    print(f"wrote {out}: {frames / handle.frame_rate:.2f} s, {len(performed.schedule)} control events replayed; "
          f"tokens sha256 {result.codes_sha256[:16]}")
    if result.matches_log is True:
        print("replay: tokens identical to the performance")
    elif result.matches_log is False:
        print("replay: tokens DIFFER from the performance (other model, vectors, torch build or device?)",
              file=sys.stderr)
        return 1
    return 0


def _render_stems(args: argparse.Namespace, handle: Any, vectors: Any, performed: Any, settings: Any,
                  smoothing: float, frames: int, window: dict[str, Any]) -> int:
    """Replay a set of stems: ``--out`` gets their sum, ``<out>.<name>.wav`` each stem."""
    import numpy as np

    from steering_core.audio import write_wav

    from ..live.stem_mix import stem_recording
    from ..tools.replay import replay_stems

    started = time.perf_counter()
    stems = replay_stems(handle, vectors, performed, settings=settings, smoothing_ms=smoothing, frames=frames,
                         **window)
    _log_speed(frames / handle.frame_rate, time.perf_counter() - started)
    write_wav(args.out, np.clip(sum(s.audio for s in stems), -1.0, 1.0), handle.sample_rate)
    code = 0
    for stem in stems:
        out = write_wav(stem_recording(args.out, stem.name), stem.audio, handle.sample_rate)
        verdict = {True: "tokens identical to the performance", False: "tokens DIFFER from the performance",
                   None: "no hash in the log to check against"}[stem.matches_log]
        print(f"stem {stem.name}: wrote {out}; {verdict}", file=sys.stderr if stem.matches_log is False else sys.stdout)
        code = 1 if stem.matches_log is False else code
    print(f"wrote {args.out}: {frames / handle.frame_rate:.2f} s, {len(stems)} stems, "
          f"{len(performed.schedule)} control events replayed")
    return code
