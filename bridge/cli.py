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
from steering_core.sites import SITES, SiteError
from steering_core.vectors import VectorFileError, VectorMismatchError

from . import __version__

log = logging.getLogger("steerbridge")

#: Errors that mean "the user asked for something we cannot do", reported as one line.
USER_ERRORS = (ModelLoadError, VectorFileError, VectorMismatchError, ConceptError, SiteError,
               ValueError, KeyError, FileNotFoundError)


class CliError(Exception):
    pass


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


def cmd_extract(args: argparse.Namespace) -> int:
    from steering_core.concepts import load_concept
    from steering_core.extraction import METHODS, extract_vector
    from steering_core.models import load_model

    if args.method not in METHODS:
        raise CliError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)}")
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


def cmd_render(args: argparse.Namespace) -> int:
    from steering_core.audio import write_wav
    from steering_core.models import load_model
    from steering_core.render import render
    from steering_core.sampling import SamplingSettings
    from steering_core.vectors import load_vectors

    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise CliError("--seconds must be a positive number")
    vectors = [v for path in args.vectors for v in load_vectors(path)]
    alphas = dict(args.steer)
    unknown = sorted(set(alphas) - {v.concept for v in vectors})
    if unknown:
        raise CliError(f"--steer names {', '.join(unknown)} but no --vectors file holds "
                       f"{'it' if len(unknown) == 1 else 'them'} (loaded: {', '.join(v.concept for v in vectors) or 'none'})")
    handle = load_model(args.model, args.device, args.dtype)
    settings = SamplingSettings(guidance_scale=args.guidance, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p)
    audio = render(handle, args.prompt, args.seconds, seed=args.seed, vectors=vectors, alphas=alphas,
                   settings=settings)
    out = write_wav(args.out, audio, handle.sample_rate)
    steer = ", ".join(f"{k}={v:g}" for k, v in alphas.items()) or "no steering"
    print(f"wrote {out}: {audio.shape[-1] / handle.sample_rate:.2f} s at {handle.sample_rate} Hz, {steer}, seed {args.seed}")
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
    result = run_bench(args.model, args.seconds, args.device, args.dtype, repeats=args.repeats)
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
    p.add_argument("--concept", required=True, help="preset name (e.g. tempo) or a concept .yaml file")
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
    _model_args(p)
    p.add_argument("--prompt", default="an energetic electronic track")
    p.add_argument("--vectors", action="append", default=[], help="vector file or folder (repeatable)")
    p.add_argument("--steer", action="append", type=parse_steer, default=[], metavar="CONCEPT=ALPHA")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--out", required=True, help="output .wav")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("demo", help="zero-setup showcase on the built-in tiny model")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="engine speed beside transformers' generate(), same run")
    _model_args(p)
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds generated per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
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
