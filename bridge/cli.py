"""``steerbridge``: the command line.

Each subcommand is a small function; errors a user can fix end as one line on
stderr and exit status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steering_core.errors import UserError

from . import __version__

if TYPE_CHECKING:  # the command line imports torch only once a command runs (``--help`` stays instant)
    from steering_core.stream.sampling import SamplingSettings

log = logging.getLogger("steerbridge")

#: ``steering_core.steer.sites.SITES`` and ``steering_core.extract.extraction.METHODS``, spelled out so that
#: ``--help`` needs no torch; tests/test_cli.py checks that they agree.
SITE_NAMES: tuple[str, ...] = ("resid_post", "attn_out", "cross_attn_out", "mlp_out", "head")
METHOD_NAMES: tuple[str, ...] = ("diffmean", "pca", "probe_logistic", "probe_mse")
class CliError(UserError):
    """A command-line mistake the user can fix; printed as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line: bad input (``UserError``, whatever module raised it)
    and the environment refusing (``OSError``: a missing file, a full disk, a busy port).
    Anything else is a bug, and keeps its traceback."""
    return (UserError, OSError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (and exit status 2) rather than usage plus error."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each option's help, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or action.default == [] or "%(default)" in text:
            return text
        return super()._get_help_string(action)


# --- argument types: each rejects a bad value while parsing, before anything loads ---
def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def finite_float(text: str) -> float:
    return _number(float, text)


def unit_interval(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(_number(int, text))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {text}")
    return value


def method_name(text: str) -> str:
    if text not in METHOD_NAMES:
        raise argparse.ArgumentTypeError(f"unknown --method {text!r}; choose one of {', '.join(METHOD_NAMES)}")
    return text


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
    """``3,4,5`` or ``2-6`` or ``all`` (None: the preset's default span; (): every layer)."""
    if text is None or text == "default":
        return None
    if text == "all":
        return ()
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants e.g. 1,2 or 0-3 or all, got {text!r}") from None
        if dash and not span:
            raise argparse.ArgumentTypeError(f"the range {part!r} is empty (write low-high)")
        if any(layer < 0 for layer in span):
            raise argparse.ArgumentTypeError(f"layers count from 0, got {text!r}")
        out.extend(span)
    return tuple(out)


def layers_arg(text: str) -> str:
    """Checks the syntax while parsing; the command still reads ``args.layers`` as text."""
    parse_layers(text)
    return text


# --- checks that need files, ports or names, still before the model loads ---------
def check_model(spec: str) -> None:
    from steering_core.model.names import check_model_spec

    check_model_spec(spec)


def check_vector_paths(paths: Sequence[str]) -> None:
    for path in paths:
        if not Path(path).exists():
            raise CliError(f"--vectors {path}: no such file or folder (write one with `steerbridge extract ... --out {path}`)")


def check_output_file(path: str, option: str) -> None:
    """The file can be written: it is not a folder, and its nearest existing ancestor is a
    folder we may write into (missing folders below it are created when writing)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise CliError(f"{option} {path} is a folder; give a file name")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CliError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: no permission to write in {ancestor}")


def check_udp_port_free(host: str, port: int) -> None:
    """Bind and release: a busy port is one line now, not after the model has loaded."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise CliError(f"cannot listen for OSC on {host}:{port} ({exc.strerror or exc}); is another steerbridge "
                       f"running? Pick another --osc-port") from None


#: The model every command uses unless told otherwise (``render`` too, without --automation).
DEFAULT_MODEL = "toy"


def _model_args(p: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL, model_help: str = "") -> None:
    """--model, --device, --dtype: the single place the default model is set."""
    p.add_argument("--model", default=model_default,
                   help=model_help or "a built-in model (toy: small, trained on synthetic music; tiny, tiny-stereo: random "
                   "weights, for mechanics), musicgen-small|medium|large (the real shape "
                   "with RANDOM weights, for speed), a hub id such as facebook/musicgen-small, or a local folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16")


def _cuda_graphs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                   help="static decode step: replay it as a CUDA graph, checked against eager at start "
                        "(auto: on CUDA only; off: eager)")


def cmd_extract(args: argparse.Namespace) -> int:
    from steering_core.extract.concepts import load_concept

    if bool(args.concept) == bool(args.data):
        raise CliError("give --concept (a preset or .yaml) or --data (a folder per class), not both")
    check_output_file(args.out, "--out")
    check_model(args.model)
    if args.data:
        if not Path(args.data).is_dir():
            raise CliError(f"--data {args.data}: no such folder (it wants one sub-folder of audio files per class)")
        return _extract_from_audio(args)
    preset = load_concept(args.concept)  # a bad name or file is reported before the model loads

    from steering_core.extract.extraction import extract_vector
    from steering_core.model.loading import load_model
    from steering_core.steer.vectors import VectorFileError

    handle = load_model(args.model, args.device, args.dtype)
    layers = _layers_on(handle.num_layers, args.layers, args.model)
    try:
        vector = extract_vector(handle, preset, method=args.method, site=args.site, layers=layers,
                                frames=args.frames, seed=args.seed, batch_size=args.batch_size, pool=args.pool)
    except VectorFileError as exc:
        if "zero length" not in str(exc):
            raise
        site = args.site or preset.site
        raise CliError(f"{args.method} at site {site} found no direction: {exc}. The two prompt sets do not separate "
                       f"there on this model; try --method diffmean, another --site (e.g. resid_post), or --layers "
                       f"without that layer") from None
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r}, {vector.method} at {vector.site}, layers "
          f"{list(vector.layers)}, {vector.n_pos}+{vector.n_neg} prompts, alpha range {list(vector.alpha_range)}")
    return 0


def _layers_on(num_layers: int, text: str | None, model: str) -> tuple[int, ...] | None:
    """``--layers`` checked against the loaded model: one line naming its layer count."""
    layers = parse_layers(text)
    if layers == ():
        return tuple(range(num_layers))
    if layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < num_layers]
        if bad:
            raise CliError(f"--layers {text}: layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} do"
                           f"{'' if len(bad) > 1 else 'es'} not exist; {model} has {num_layers} layers, 0..{num_layers - 1}")
    return layers


def _extract_from_audio(args: argparse.Namespace) -> int:
    from steering_core.model.loading import load_model

    from .tools.analyze import AnalyzeOptions, activations_from_data, vector_on_layers

    handle = load_model(args.model, args.device, args.dtype)
    options = AnalyzeOptions(data=args.data, positive=args.positive, negative=args.negative, name=args.name,
                             site=args.site, window_s=args.window)
    acts = activations_from_data(handle, options)
    layers = _layers_on(handle.num_layers, args.layers, args.model)
    chosen = list(range(handle.num_layers)) if layers is None else list(layers)
    vector = vector_on_layers(handle, acts, chosen, method=args.method)
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r} ({acts.positive_label} vs {acts.negative_label}), {vector.method} "
          f"at {vector.site}, layers {chosen}, {vector.n_pos}+{vector.n_neg} audio windows")
    return 0


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
    seconds = 5.0 if args.seconds is None else args.seconds
    from steering_core.audio import write_wav
    from steering_core.model.loading import load_model
    from steering_core.steer.vectors import load_vectors
    from steering_core.stream.render import render

    vectors = [v for path in args.vectors for v in load_vectors(path)]
    alphas = dict(args.steer)
    unknown = sorted(set(alphas) - {v.concept for v in vectors})
    if unknown:
        raise CliError(f"--steer names {', '.join(unknown)} but no --vectors file holds "
                       f"{'it' if len(unknown) == 1 else 'them'} (loaded: {', '.join(v.concept for v in vectors) or 'none'})")
    handle = load_model(args.model or DEFAULT_MODEL, args.device, args.dtype)
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
    from steering_core.stream.sampling import SamplingSettings

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
    from steering_core.model.loading import load_model
    from steering_core.steer.vectors import load_vector, load_vectors

    from .tools.replay import midi_schedule, read_log, replay

    path = Path(args.automation)
    if args.steer:
        raise CliError("--steer and --automation do not mix: the automation sets the knobs")
    if path.suffix.lower() in (".mid", ".midi"):
        if not args.vectors:
            raise CliError("a .mid automation needs --vectors for the concepts its controller map drives")
        vectors = [v for p in args.vectors for v in load_vectors(p)]
        handle = load_model(args.model or DEFAULT_MODEL, args.device, args.dtype)
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
        handle = load_model(args.model or str(h.get("model", DEFAULT_MODEL)), args.device, args.dtype)
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
    check_model(args.model)
    check_vector_paths(args.vectors)
    for path, option in ((args.record, "--record"), (args.log, "--log")):
        if path is not None:
            check_output_file(path, option)
    from .live.chains import load_chain
    from .live.midimaps import load_map

    load_chain(args.chain)  # a wrong name lists the ones there are, before the model loads
    load_map(args.midi_map)
    check_udp_port_free(args.osc_host, args.osc_port)
    from .live.engine import EngineSettings
    from .live.serve import ServeOptions, run_serve

    engine = EngineSettings(ring_ms=args.buffer_ms, lookahead_frames=args.lookahead)
    options = ServeOptions(
        model=args.model, device=args.device, dtype=args.dtype, prompt=args.prompt, seed=args.seed,
        vectors=args.vectors, osc_host=args.osc_host, osc_port=args.osc_port, midi_in=args.midi_in,
        midi_map=args.midi_map, midi_api=args.midi_api, audio_out=args.audio_out, chain=args.chain,
        record=args.record, log=args.log, scenes_dir=args.scenes_dir, duration=args.duration,
        smoothing_ms=args.smoothing_ms, guidance=args.guidance, temperature=args.temperature, top_k=args.top_k,
        engine=engine, status_line=not args.quiet, threads=args.threads, cuda_graphs=args.cuda_graphs,
        codec_chunk=args.codec_chunk)
    return run_serve(options)


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.sweep_points < 2:
        raise CliError("--sweep-points must be 2 or more")
    if bool(args.concept) == bool(args.data):
        raise CliError("give --concept (one or more presets) or --data (a folder per class), not both")
    if args.data and not Path(args.data).is_dir():
        raise CliError(f"--data {args.data}: no such folder (it wants one sub-folder of audio files per class)")
    check_model(args.model)
    from steering_core.extract.concepts import load_concept

    for concept in args.concept:
        load_concept(concept)
    from .tools.analyze import AnalyzeOptions, run_analyze

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
    from .live.midi import MidiMapError, list_midi_inputs
    from .live.outputs import OutputError, list_audio_devices

    print("audio outputs (--audio-out <number or name>, default, none):")
    try:
        for line in list_audio_devices() or ["(none)"]:
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
    check_output_file(str(Path(args.out) / "demo.json"), "--out")
    if args.seeds < 2 or args.points < 3:
        raise CliError("--seeds must be at least 2 and --points at least 3 (a spread and a trend need them)")
    from .tools.demo import run_demo

    run_demo(Path(args.out), model=args.model, seconds=args.seconds, seed=args.seed, seeds=args.seeds,
             points=args.points)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    check_model(args.model)
    from .tools.bench import run_bench

    result = run_bench(args.model, args.seconds, args.device, args.dtype, repeats=args.repeats,
                       max_streams=args.max_streams if args.streams else 0, reprime=args.reprime,
                       cuda_graphs=args.cuda_graphs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def cmd_save_tiny(args: argparse.Namespace) -> int:
    check_output_file(str(Path(args.folder) / "config.json"), "save-tiny")
    from steering_core.model.loading import _quiet_transformers
    from steering_core.model.tiny import save_tiny

    with _quiet_transformers():  # pad = bos = vocab_size is MusicGen's design, not a fault to warn about
        folder = save_tiny(args.folder)
    print(f"wrote the tiny model to {folder}; load it with --model {folder}")
    return 0


def _command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=description, formatter_class=DefaultsFormatter)


def _sampling_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--guidance/--temperature/--top-k/--top-p; with ``defaults`` False they fall back on the performance's."""
    fallback = " (default: 3, or the performance's)" if not defaults else ""
    p.add_argument("--guidance", type=non_negative_float, default=3.0 if defaults else None,
                   help="classifier-free guidance scale: how closely the music follows the prompt" + fallback)
    p.add_argument("--temperature", type=positive_float, default=1.0 if defaults else None,
                   help="sampling temperature: lower is safer, higher is wilder" + fallback.replace("3", "1"))
    p.add_argument("--top-k", type=non_negative_int, default=250 if defaults else None,
                   help="sample from the k most likely tokens (0: no limit)" + fallback.replace("3", "250"))
    p.add_argument("--top-p", type=unit_interval, default=0.0 if defaults else None,
                   help="nucleus sampling threshold (0: off)" + fallback.replace("3", "0"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="steerbridge", formatter_class=DefaultsFormatter,
        description="Steer MusicGen live with activation steering: musical concepts are directions in the model's "
                    "activations, and each gets a knob (OSC, MIDI) that turns while the music plays.",
        epilog="Start with `steerbridge demo`. Every command has --help. Docs: README.md and docs/ in the repository.")
    parser.add_argument("--version", action="version", version=f"steerbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    p = _command(sub, "extract", "write a steering-vector file for a concept",
                 "Extract a concept's direction from the model's activations and write it as a steering-vector file "
                 "(.safetensors, see docs/VECTORS.md) for render and serve. From a concept preset's prompt pairs "
                 "(--concept), or from labelled audio (--data).")
    _model_args(p)
    p.add_argument("--concept", default=None, help="preset name (tempo, timbre, jazz_vs_rock, ...) or a concept .yaml file")
    p.add_argument("--data", default=None, help="labelled audio instead: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class to steer towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class to steer away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: concept name (default: <positive>_vs_<negative>)")
    p.add_argument("--window", type=positive_float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--method", type=method_name, default="diffmean", help=" | ".join(METHOD_NAMES))
    p.add_argument("--site", default=None, choices=SITE_NAMES, help="where in each layer (default: the preset's)")
    p.add_argument("--layers", type=layers_arg, default=None,
                   help="layers from 0, e.g. 1,2 or 0-3 or all (default: the preset's span of the model)")
    p.add_argument("--frames", type=positive_int, default=50, help="frames generated per prompt")
    p.add_argument("--pool", default="mean", choices=("mean", "last"), help="how a prompt's frames are pooled")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt expansion and sampling")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = _command(sub, "render", "offline generation with the streaming engine",
                 "Render a WAV offline with the same engine serve plays live, steered by --steer concept=alpha, "
                 "or replay a serve performance log (or a .mid of controller moves) with --automation. Alpha 0 is "
                 "bit-identical to no vectors.")
    _model_args(p, model_default=None, model_help=f"as for extract (default: {DEFAULT_MODEL}, or the performance's "
                "model with --automation)")
    p.add_argument("--prompt", default=None, help=f"text prompt (default: {DEFAULT_PROMPT!r}, or the performance's)")
    p.add_argument("--vectors", action="append", default=[], help="vector file or folder (repeatable)")
    p.add_argument("--steer", action="append", type=parse_steer, default=[], metavar="CONCEPT=ALPHA",
                   help="steer a concept from --vectors by alpha (repeatable; default: no steering)")
    p.add_argument("--automation", default=None, help="a serve performance log (.jsonl) or a .mid file to replay")
    p.add_argument("--midi-map", default="generic", help="controller map for a .mid automation")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="length in seconds (default: 5, or the performance's length)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: 0, or the performance's)")
    _sampling_args(p, defaults=False)
    p.add_argument("--out", required=True, help="output .wav")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_render)

    p = _command(sub, "serve", "the live bridge: OSC and MIDI knobs steer the music while it plays",
                 "Generate music endlessly and play it, while OSC messages and MIDI knobs steer it. The status line "
                 "shows the playing time, rtf (audio seconds generated per second; below 1 the music stutters), buf "
                 "(audio ready), xruns (times the sound card ran dry), control latency and the alphas. OSC addresses: "
                 "docs/OSC.md.")
    _model_args(p)
    p.add_argument("--prompt", default="an energetic electronic track with a steady beat", help="text prompt to start with")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--vectors", action="append", default=[],
                   help="vector file or folder (repeatable; default: timbre and tempo, extracted once and cached)")
    p.add_argument("--osc-host", default="127.0.0.1", help="address to listen on; 0.0.0.0 accepts other machines")
    p.add_argument("--osc-port", type=port_number, default=9000, help="UDP port to listen on for OSC")
    p.add_argument("--midi-in", default="none", help="MIDI input port name (or part of it) | virtual | none")
    p.add_argument("--midi-map", default="generic",
                   help="controller map: generic, nanokontrol2, launchcontrol_xl, midimix, beatstep, a saved map or a .yaml")
    p.add_argument("--midi-api", default="auto", choices=("auto", "jack", "alsa"), help="MIDI back end")
    p.add_argument("--audio-out", default="default", help="device number or name | default | none (a silent clock)")
    p.add_argument("--chain", default="default",
                   help="effect chain: default, clean, space, lofi or a .yaml (a limiter always ends it)")
    p.add_argument("--record", default=None, help="record the output to this .wav (valid even after Ctrl-C)")
    p.add_argument("--log", default=None, help="performance log (.jsonl; default: beside --record)")
    p.add_argument("--scenes-dir", default=None, help="where scenes are saved (default: ~/.local/share/steerbridge/scenes)")
    p.add_argument("--duration", type=positive_float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--smoothing-ms", type=non_negative_float, default=30.0, help="knob smoothing time constant")
    p.add_argument("--buffer-ms", type=positive_float, default=50.0,
                   help="audio kept ready: more survives jitter, less reacts faster")
    p.add_argument("--lookahead", type=non_negative_int, default=0,
                   help="frames of tokens generated ahead (rolled back on a change)")
    p.add_argument("--codec-chunk", type=positive_int, default=None,
                   help="frames per codec decode (default: the model's own, 4 for toy): more cost less per frame "
                        "but arrive in bigger bursts (raise --buffer-ms with it); each adds up to 20 ms of latency")
    p.add_argument("--guidance", type=non_negative_float, default=3.0,
                   help="classifier-free guidance scale: how closely the music follows the prompt")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=non_negative_int, default=250, help="sample from the k most likely tokens (0: no limit)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: 1 for the built-in models, else torch's)")
    p.add_argument("--quiet", action="store_true", help="no status line")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_serve)

    p = _command(sub, "analyze", "where concepts live: probes, clustering, influence, alpha sweeps, plots",
                 "For each layer: probe accuracy, k-means ARI/NMI, cosines between directions and the influence of "
                 "steering that layer alone; then an alpha sweep with audio metrics and CLAP scores. Writes "
                 "report.json, PNG plots and a vector on the recommended layers.")
    _model_args(p)
    p.add_argument("--concept", action="append", default=[], help="concept preset or .yaml (repeatable)")
    p.add_argument("--data", default=None, help="labelled audio: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class steering goes towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class it goes away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: the concept's name (default: <positive>_vs_<negative>)")
    p.add_argument("--site", default=None, choices=SITE_NAMES, help="where in each layer (default: the preset's, or resid_post)")
    p.add_argument("--frames", type=positive_int, default=25, help="frames generated per prompt")
    p.add_argument("--window", type=positive_float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--data-prompt", default=None, help="--data: text prompt while teacher-forcing (default: none)")
    p.add_argument("--cache", default=None, help="activation cache folder (default: ~/.cache/steerbridge/activations)")
    p.add_argument("--sweep-points", type=positive_int, default=5, help="alphas across the concept's range (2 or more)")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds per sweep point")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per sweep clip")
    p.add_argument("--prompt", default="an ambient synth piece with drums", help="prompt for the sweep")
    p.add_argument("--clap", default="tiny",
                   help="CLAP hub id or folder (e.g. laion/clap-htsat-unfused) | tiny (random weights, plumbing only) | none")
    p.add_argument("--write-back", action="store_true", help="also write <concept>.yaml with the recommended layers")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_analyze)

    p = _command(sub, "devices", "list audio outputs and MIDI inputs",
                 "List the audio outputs (for serve --audio-out) and MIDI inputs (for serve --midi-in) this machine has.")
    p.add_argument("--midi-api", default="auto", choices=("auto", "jack", "alsa"), help="MIDI back end")
    p.set_defaults(func=cmd_devices)

    p = _command(sub, "demo", f"zero-setup showcase: tempo and timbre steering on the built-in {DEFAULT_MODEL} model",
                 "Extract the tempo and timbre vectors, render an alpha sweep of each over several seeds on a neutral "
                 "prompt, and write to --out: one WAV per alpha, <concept>_<metric>_vs_alpha.png (mean and spread "
                 "across seeds), <concept>_spectrograms.png and demo.json (every measured number). Prints the "
                 "measured effect, one line per concept. No download, no GPU.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to steer")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--seconds", type=positive_float, default=4.0, help="length of each clip in seconds")
    p.add_argument("--seed", type=int, default=7, help="sampling seed (the --seeds renders of an alpha are one batch)")
    p.add_argument("--seeds", type=int, default=5, help="renders per alpha (2 or more); the plots draw their spread")
    p.add_argument("--points", type=int, default=7, help="alphas in each sweep (3 or more)")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "bench", "engine speed beside transformers' generate(), same run",
                 "Time the streaming engine beside transformers' own generate() on the same model, device, dtype, "
                 "guidance and length, in the same run; print one JSON object. Warns when the repeats disagree by "
                 "more than 20 % (a busy machine).")
    _model_args(p)
    p.add_argument("--seconds", type=positive_float, default=10.0, help="audio seconds generated per timed run")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per side; the fastest counts")
    p.add_argument("--streams", action="store_true",
                   help="also batch 1, 2, 4, ... steered streams until one batch no longer keeps real time")
    p.add_argument("--max-streams", type=positive_int, default=256, help="where --streams stops if real time never breaks")
    p.add_argument("--reprime", action="store_true",
                   help="also time one re-prime at half the trained window (generates that many frames first)")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    _cuda_graphs_arg(p)
    p.set_defaults(func=cmd_bench)

    from .tools.toycmd import add_toy_parser

    add_toy_parser(sub)

    p = _command(sub, "save-tiny", "write the built-in tiny model to a folder",
                 "Write the built-in tiny model (random weights) as a save_pretrained folder, which loads with "
                 "--model <folder> through the same from_pretrained path as a real checkpoint.")
    p.add_argument("folder", help="folder to write (created if missing)")
    p.set_defaults(func=cmd_save_tiny)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"steerbridge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steerbridge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
