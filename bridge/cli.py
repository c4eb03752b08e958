"""``steerbridge``: the command line.

Each subcommand is a small function; errors a user can fix end as one line on
stderr and exit status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from steering_core.concepts import ConceptError
from steering_core.models import ModelLoadError
from steering_core.sampling import SamplingSettings
from steering_core.sites import SITES, SiteError
from steering_core.vectors import VectorFileError, VectorMismatchError

from . import __version__

log = logging.getLogger("steerbridge")

#: Errors that mean "the user asked for something we cannot do", reported as one line.
USER_ERRORS = (ModelLoadError, VectorFileError, VectorMismatchError, ConceptError, SiteError,
               ValueError, KeyError, OSError)


class CliError(Exception):
    """A command-line mistake the user can fix; printed as one line."""


def parse_steer(text: str) -> tuple[str, float]:
    """``concept=alpha`` -> (concept, alpha); alpha must be a finite number."""
    name, sep, value = text.partition("=")
    try:
        alpha = float(value)
    except ValueError:
        alpha = math.nan
    if not sep or not name or not math.isfinite(alpha):
        raise argparse.ArgumentTypeError(f"--steer wants concept=number, got {text!r}")
    return name, alpha


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``3,4,5`` or ``2-6`` or ``all`` (None: the preset's default span)."""
    if text is None or text == "default":
        return None
    if text == "all":
        return ()
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        except ValueError:
            raise argparse.ArgumentTypeError(f"--layers wants e.g. 3,4,5 or 2-6 or all, got {text!r}") from None
    return tuple(out)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="tiny | musicgen-small|medium|large (random weights) | hub id | folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")


def _cuda_graphs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                   help="static decode step: replay it as a CUDA graph, checked against eager at start "
                        "(auto: on CUDA only; off: eager)")


def cmd_extract(args: argparse.Namespace) -> int:
    from steering_core.concepts import load_concept
    from steering_core.extraction import METHODS, extract_vector
    from steering_core.models import load_model

    if args.method not in METHODS:
        raise CliError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)}")
    if bool(args.concept) == bool(args.data):
        raise CliError("give --concept (a preset or .yaml) or --data (a folder per class), not both")
    if args.data:
        return _extract_from_audio(args)
    preset = load_concept(args.concept)
    handle = load_model(args.model, args.device, args.dtype)
    layers = parse_layers(args.layers)
    if layers == ():
        layers = tuple(range(handle.num_layers))
    vector = extract_vector(handle, preset, method=args.method, site=args.site, layers=layers,
                            frames=args.frames, seed=args.seed, batch_size=args.batch_size,
                            pool=args.pool)
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r}, {vector.method} at {vector.site}, layers "
          f"{list(vector.layers)}, {vector.n_pos}+{vector.n_neg} prompts, alpha range {list(vector.alpha_range)}")
    return 0


def _extract_from_audio(args: argparse.Namespace) -> int:
    from steering_core.models import load_model

    from .analyze import AnalyzeOptions, activations_from_data, vector_on_layers

    handle = load_model(args.model, args.device, args.dtype)
    options = AnalyzeOptions(data=args.data, positive=args.positive, negative=args.negative, name=args.name,
                             site=args.site, window_s=args.window)
    acts = activations_from_data(handle, options)
    layers = parse_layers(args.layers)
    chosen = list(range(handle.num_layers)) if layers in (None, ()) else list(layers)
    bad = [layer for layer in chosen if not 0 <= layer < handle.num_layers]
    if bad:
        raise CliError(f"--layers {bad} outside 0..{handle.num_layers - 1}")
    vector = vector_on_layers(handle, acts, chosen, method=args.method)
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r} ({acts.positive_label} vs {acts.negative_label}), {vector.method} "
          f"at {vector.site}, layers {chosen}, {vector.n_pos}+{vector.n_neg} audio windows")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from steering_core.audio import write_wav
    from steering_core.models import load_model
    from steering_core.render import render
    from steering_core.vectors import load_vectors

    if args.automation:
        return _render_automation(args)
    seconds = 5.0 if args.seconds is None else args.seconds
    if not (seconds > 0 and math.isfinite(seconds)):
        raise CliError("--seconds must be a positive number")
    vectors = [v for path in args.vectors for v in load_vectors(path)]
    alphas = dict(args.steer)
    unknown = sorted(set(alphas) - {v.concept for v in vectors})
    if unknown:
        raise CliError(f"--steer names {', '.join(unknown)} but no --vectors file holds "
                       f"{'it' if len(unknown) == 1 else 'them'} (loaded: {', '.join(v.concept for v in vectors) or 'none'})")
    handle = load_model(args.model or "tiny", args.device, args.dtype)
    settings = _settings(args, {})
    seed = args.seed or 0
    audio = render(handle, args.prompt or DEFAULT_PROMPT, seconds, seed=seed, vectors=vectors, alphas=alphas,
                   settings=settings, cuda_graphs=args.cuda_graphs)
    out = write_wav(args.out, audio, handle.sample_rate)
    steer = ", ".join(f"{k}={v:g}" for k, v in alphas.items()) or "no steering"
    print(f"wrote {out}: {audio.shape[-1] / handle.sample_rate:.2f} s at {handle.sample_rate} Hz, {steer}, seed {seed}")
    return 0


DEFAULT_PROMPT = "an energetic electronic track"


def _settings(args: argparse.Namespace, base: dict[str, object]) -> SamplingSettings:
    from steering_core.sampling import SamplingSettings

    values = {"guidance_scale": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0, **base}
    for key, arg in (("guidance_scale", args.guidance), ("temperature", args.temperature), ("top_k", args.top_k),
                     ("top_p", args.top_p)):
        if arg is not None:
            values[key] = arg
    settings = SamplingSettings(**values)  # type: ignore[arg-type]
    settings.validate()
    return settings


def _render_automation(args: argparse.Namespace) -> int:
    import hashlib

    from steering_core.audio import write_wav
    from steering_core.models import load_model
    from steering_core.vectors import load_vector, load_vectors

    from .replay import midi_schedule, read_log, replay

    path = Path(args.automation)
    if args.steer:
        raise CliError("--steer and --automation do not mix: the automation sets the knobs")
    if path.suffix.lower() in (".mid", ".midi"):
        if not args.vectors:
            raise CliError("a .mid automation needs --vectors for the concepts its controller map drives")
        vectors = [v for p in args.vectors for v in load_vectors(p)]
        handle = load_model(args.model or "tiny", args.device, args.dtype)
        settings = _settings(args, {})
        prompt, seed, smoothing, window = args.prompt or DEFAULT_PROMPT, args.seed or 0, 30.0, {}
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
        handle = load_model(args.model or str(h.get("model", "tiny")), args.device, args.dtype)
        if h.get("model_config_sha256") not in (None, handle.config_sha256):
            raise CliError("this performance was played on another model configuration; pass the same --model")
        settings = _settings(args, dict(h.get("settings", {})))
        prompt = args.prompt if args.prompt is not None else str(h.get("prompt", DEFAULT_PROMPT))
        seed = args.seed if args.seed is not None else int(h.get("seed", 0))
        smoothing = float(h.get("smoothing_ms", 30.0))
        window = {"window_frames": h.get("window_frames"), "reprime_frames": h.get("reprime_frames")}
    if args.seconds is not None:
        frames = max(1, round(args.seconds * handle.frame_rate))
    elif performed.frames:
        frames = performed.frames
    else:
        raise CliError("the automation does not say how long it ran; pass --seconds")
    result = replay(handle, vectors, performed, prompt=prompt, seed=seed, settings=settings, smoothing_ms=smoothing,
                    frames=frames, **window)
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


def cmd_serve(args: argparse.Namespace) -> int:
    from .engine import EngineSettings
    from .serve import ServeOptions, run_serve

    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        raise CliError("--duration must be a positive number of seconds")
    if not 0 < args.osc_port < 65536:
        raise CliError("--osc-port must be in 1..65535")
    engine = EngineSettings(ring_ms=args.buffer_ms, lookahead_frames=args.lookahead)
    options = ServeOptions(
        model=args.model, device=args.device, dtype=args.dtype, prompt=args.prompt, seed=args.seed,
        vectors=args.vectors, osc_host=args.osc_host, osc_port=args.osc_port, midi_in=args.midi_in,
        midi_map=args.midi_map, midi_api=args.midi_api, audio_out=args.audio_out, chain=args.chain,
        record=args.record, log=args.log, scenes_dir=args.scenes_dir, duration=args.duration,
        smoothing_ms=args.smoothing_ms, guidance=args.guidance, temperature=args.temperature, top_k=args.top_k,
        engine=engine, status_line=not args.quiet, threads=args.threads, cuda_graphs=args.cuda_graphs)
    return run_serve(options)


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import AnalyzeOptions, run_analyze

    if args.seeds < 1 or args.sweep_points < 2 or not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise CliError("--seeds >= 1, --sweep-points >= 2 and a positive --seconds, please")
    options = AnalyzeOptions(
        model=args.model, device=args.device, dtype=args.dtype, concepts=args.concept, data=args.data,
        positive=args.positive, negative=args.negative, name=args.name, site=args.site, frames=args.frames,
        window_s=args.window, data_prompt=args.data_prompt, sweep_points=args.sweep_points, seeds=args.seeds,
        seconds=args.seconds, prompt=args.prompt, clap=None if args.clap == "none" else args.clap,
        write_back=args.write_back, cache=args.cache)
    out = Path(args.out)
    report = run_analyze(options, out)
    print(f"wrote {out / 'report.json'} and plots to {out}/")
    for name, entry in report["concepts"].items():
        best = entry["layers"][entry["recommended_layers"][0]]
        print(f"  {name}: recommended layers {entry['recommended_layers']} (probe accuracy {best['acc_logistic']:.2f}, "
              f"NMI {best['nmi']:.2f}); vector {entry['vector']}" + (f", preset {entry['preset']}" if "preset" in entry else ""))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .midi import MidiMapError, list_midi_inputs
    from .outputs import OutputError, list_audio_devices

    print("audio outputs (--audio-out <number or name>, default, none):")
    try:
        for line in list_audio_devices():
            print(f"  {line}")
    except OutputError as exc:
        print(f"  unavailable: {exc}")
    print("MIDI inputs (--midi-in <name or part of it>, virtual, none):")
    try:
        names = list_midi_inputs(args.midi_api)
        for name in names or ["(none)"]:
            print(f"  {name}")
    except MidiMapError as exc:
        print(f"  unavailable: {exc}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seconds=args.seconds, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import run_bench

    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise CliError("--seconds must be a positive number")
    result = run_bench(args.model, args.seconds, args.device, args.dtype, repeats=args.repeats,
                       max_streams=args.max_streams if args.streams else 0, reprime=args.reprime,
                       cuda_graphs=args.cuda_graphs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def cmd_save_tiny(args: argparse.Namespace) -> int:
    from steering_core.tiny import save_tiny

    folder = save_tiny(args.folder)
    print(f"wrote the tiny model to {folder}; load it with --model {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerbridge", description="Steer MusicGen live with activation steering.")
    parser.add_argument("--version", action="version", version=f"steerbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="write a steering-vector file for a concept")
    _model_args(p)
    p.add_argument("--concept", default=None, help="preset name (e.g. tempo) or a concept .yaml file")
    p.add_argument("--data", default=None, help="labelled audio instead: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class to steer towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class to steer away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: concept name (default <positive>_vs_<negative>)")
    p.add_argument("--window", type=float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--method", default="diffmean", help="diffmean | pca | probe_logistic | probe_mse")
    p.add_argument("--site", default=None, choices=SITES, help="default: the preset's")
    p.add_argument("--layers", default=None, help="e.g. 3,4,5 or 2-6 or all (default: the preset's span)")
    p.add_argument("--frames", type=int, default=50, help="frames generated per prompt")
    p.add_argument("--pool", default="mean", choices=("mean", "last"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("render", help="offline generation with the streaming engine")
    p.add_argument("--model", default=None, help="default: tiny, or the performance's model with --automation")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--prompt", default=None, help=f"default: {DEFAULT_PROMPT!r}, or the performance's")
    p.add_argument("--vectors", action="append", default=[], help="vector file or folder (repeatable)")
    p.add_argument("--steer", action="append", type=parse_steer, default=[], metavar="CONCEPT=ALPHA")
    p.add_argument("--automation", default=None, help="a serve performance log (.jsonl) or a .mid file to replay")
    p.add_argument("--midi-map", default="generic", help="controller map for a .mid automation")
    p.add_argument("--seconds", type=float, default=None, help="default 5, or the performance's length")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--out", required=True, help="output .wav")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("serve", help="the live bridge: OSC and MIDI knobs steer the music while it plays")
    _model_args(p)
    p.add_argument("--prompt", default="an energetic electronic track with a steady beat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectors", action="append", default=[],
                   help="vector file or folder (repeatable); default: timbre and tempo, extracted once and cached")
    p.add_argument("--osc-host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    p.add_argument("--osc-port", type=int, default=9000)
    p.add_argument("--midi-in", default="none", help="port name (or part of it) | virtual | none")
    p.add_argument("--midi-map", default="generic",
                   help="controller map: generic, nanokontrol2, launchcontrol_xl, midimix, beatstep, or a .yaml")
    p.add_argument("--midi-api", default="auto", help="auto | jack | alsa")
    p.add_argument("--audio-out", default="default", help="device number or name | default | none (a silent clock)")
    p.add_argument("--chain", default="default", help="effect chain preset or .yaml (a limiter always ends it)")
    p.add_argument("--record", default=None, help="record the output to this .wav (valid even after Ctrl-C)")
    p.add_argument("--log", default=None, help="performance log (.jsonl); default: beside --record")
    p.add_argument("--scenes-dir", default=None, help="default: ~/.local/share/steerbridge/scenes")
    p.add_argument("--duration", type=float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--smoothing-ms", type=float, default=30.0, help="knob smoothing time constant")
    p.add_argument("--buffer-ms", type=float, default=50.0, help="audio kept ready: more survives jitter, less reacts faster")
    p.add_argument("--lookahead", type=int, default=0, help="frames of tokens generated ahead (rolled back on a change)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for tiny, else torch's)")
    p.add_argument("--quiet", action="store_true", help="no status line")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("analyze", help="where concepts live: probes, clustering, alpha sweeps, plots")
    _model_args(p)
    p.add_argument("--concept", action="append", default=[], help="concept preset or .yaml (repeatable)")
    p.add_argument("--data", default=None, help="labelled audio: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class steering goes towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class it goes away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: the concept's name (default: <positive>_vs_<negative>)")
    p.add_argument("--site", default=None, choices=SITES, help="default: the preset's, or resid_post")
    p.add_argument("--frames", type=int, default=25, help="frames generated per prompt")
    p.add_argument("--window", type=float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--data-prompt", default=None, help="--data: text prompt while teacher-forcing (default none)")
    p.add_argument("--cache", default=None, help="activation cache folder (default ~/.cache/steerbridge/activations)")
    p.add_argument("--sweep-points", type=int, default=5, help="alphas across the concept's range")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per sweep clip")
    p.add_argument("--prompt", default="an ambient synth piece with drums", help="prompt for the sweep")
    p.add_argument("--clap", default="tiny", help="CLAP hub id or folder (e.g. laion/clap-htsat-unfused) | tiny | none")
    p.add_argument("--write-back", action="store_true", help="also write <concept>.yaml with the recommended layers")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("devices", help="list audio outputs and MIDI inputs")
    p.add_argument("--midi-api", default="auto", help="auto | jack | alsa")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("demo", help="zero-setup showcase on the built-in tiny model")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="engine speed beside transformers' generate(), same run")
    _model_args(p)
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds generated per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts")
    p.add_argument("--streams", action="store_true",
                   help="also batch 1, 2, 4, ... steered streams until one batch no longer keeps real time")
    p.add_argument("--max-streams", type=int, default=256, help="where --streams stops if real time never breaks")
    p.add_argument("--reprime", action="store_true",
                   help="also time one re-prime at half the trained window (generates that many frames first)")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("save-tiny", help="write the built-in tiny model to a folder")
    p.add_argument("folder")
    p.set_defaults(func=cmd_save_tiny)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CliError, *USER_ERRORS) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"steerbridge {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steerbridge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
