"""``steerbridge toy``: the built-in trained model's own commands.

* ``toy train``: rebuild the weights from scratch (resumable; ~25 min on 2 CPU cores);
* ``toy world``: render labelled folders of the synthetic world for ``--data``;
* ``toy check``: the known-effect check, conditioning and steering measured on audio.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steering_core.errors import UserError
from steering_core.paths import cache_dir, data_dir

from .parsing import DefaultsFormatter, verbose_arg

if TYPE_CHECKING:
    from .parsing import Commands

log = logging.getLogger("steerbridge.toy")

DEFAULT_WORK = cache_dir("toy-train")
#: A user's training run writes here, never over the package's tracked weights.
DEFAULT_OUT = data_dir("toy-model")
#: ``TrainSettings``' step counts, spelled out so that ``--help`` needs no torch
#: (tests/test_cli_defaults.py checks that they agree).
CODEC_STEPS = 6000
LM_STEPS = 2400
LM_TEMPO_STEPS = 600


def register(sub: Commands) -> None:
    toy = sub.add_parser("toy", help="the built-in trained toy model: train it, render its world, check its effects",
                         description="The built-in trained model's own commands: train (rebuild the weights from "
                                     "scratch, resumable), world (labelled folders of the synthetic world, for "
                                     "--data), check (the known-effect check: conditioning and steering measured on "
                                     "audio).")
    verbose_arg(toy)
    tsub = toy.add_subparsers(dest="toy_command", required=True, parser_class=type(toy), help="train | world | check")
    fmt = DefaultsFormatter

    p = tsub.add_parser("train", formatter_class=fmt, help="rebuild the toy weights from scratch (resumable)",
                        description="Train the toy MusicGen on the synthetic world: the codec and the language "
                                    "model side by side, one CPU thread each, with checkpoints in --work so a "
                                    "stopped run resumes. Seeded: the same command makes the same weights.")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="model folder to write; load it with --model <folder> (the shipped weights are made with "
                        "--out steering_core/toy/weights)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="checkpoints; delete it to start over")
    p.add_argument("--codec-steps", type=int, default=CODEC_STEPS, help="codec training steps")
    p.add_argument("--lm-steps", type=int, default=LM_STEPS,
                   help=f"language model steps (then {LM_TEMPO_STEPS} more on tempo captions)")
    p.add_argument("--sequential", action="store_true", help="run the two stages one after the other")
    verbose_arg(p)
    p.set_defaults(func=cmd_toy_train)

    p = tsub.add_parser("world", formatter_class=fmt, help="labelled clips of the synthetic world",
                        description="Render <out>/<label>/*.wav for both classes of a concept (e.g. fast/ and slow/), "
                                    "everything else random: input for extract/analyze --data.")
    p.add_argument("--concept", required=True, choices=["tempo", "timbre", "mood", "piano"], help="which concept")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--per-class", type=int, default=16, help="clips per class")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    verbose_arg(p)
    p.set_defaults(func=cmd_toy_world)

    p = tsub.add_parser("check", formatter_class=fmt, help="measure conditioning and steering on the toy model",
                        description="Generate from fast/slow and bright/dark captions, and sweep the extracted tempo "
                                    "and timbre vectors over alpha on a neutral prompt; print the measured effects.")
    p.add_argument("--seeds", type=int, default=5, help="independent renders per prompt set or alpha")
    p.add_argument("--points", type=int, default=7, help="alphas in each sweep")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each render")
    p.add_argument("--method", default="diffmean", help="extraction method for the steering vectors")
    p.add_argument("--data", default="", metavar="CONCEPTS",
                   help="also extract these concepts (comma-separated, e.g. timbre,tempo) from labelled world "
                        "audio, as extract --data does, and compare with the prompt-set direction")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    verbose_arg(p)
    p.set_defaults(func=cmd_toy_check)


def _stop_on(signum: int, _frame: object) -> None:
    """Another signal than SIGINT stops training as Ctrl-C does, naming itself."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def cmd_toy_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from steering_core.toy.training import TrainSettings, train_toy

    settings = replace(TrainSettings(), codec_steps=args.codec_steps, lm_steps=args.lm_steps)
    if settings.codec_steps < 1 or settings.lm_steps < 1:
        raise UserError("--codec-steps and --lm-steps must be at least 1")
    out = Path(args.out)
    # Any stop (Ctrl-C, SIGTERM, a closed terminal) ends the workers too, and says so in one line.
    previous = {s: signal.signal(s, _stop_on) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        summary: dict[str, Any] = train_toy(out, Path(args.work), settings, parallel=not args.sequential)
    except KeyboardInterrupt as exc:
        by = str(exc)  # a signal's name from _stop_on; empty for Ctrl-C
        print(f"steerbridge toy train: stopped ({by or 'Ctrl-C'}); the same command resumes from the checkpoints "
              f"in {args.work}", file=sys.stderr)
        return 128 + signal.Signals[by].value if by else 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codec = summary["codec"]
    print(f"toy model written to {out} in {summary['seconds']:.0f} s (load it with --model {out})")
    print(f"  codec: held-out multi-resolution STFT distance {codec['multires_stft_distance']:.3f}, "
          f"SNR {codec['snr_db']:.1f} dB, code accuracy {codec['code_accuracy']:.3f}")
    print(f"  language model loss {summary['lm_loss']['first']:.3f} -> {summary['lm_loss']['last']:.3f}")
    return 0


def cmd_toy_world(args: argparse.Namespace) -> int:
    from steering_core.toy.captions import write_labelled_folders

    if args.per_class < 2 or not 0.5 <= args.seconds <= 60:
        raise UserError("--per-class must be at least 2 and --seconds within 0.5..60")
    folders = write_labelled_folders(Path(args.out), args.concept, args.per_class, args.seconds, args.seed)
    for folder in folders:
        print(f"{folder}: {args.per_class} clips of {args.seconds:g} s")
    return 0


#: Checks of ``toy check --data`` that the shipped weights are known not to meet, and why
#: (measured: benchmarks/RESULTS.md, "direction from labelled audio"). Reported as such, and
#: they do not fail the command; a check not named here still does.
KNOWN_DATA_RESULTS = {
    ("timbre", "steers_the_same_way"): "the audio direction brightens from end to end but bends back at both ends "
                                       "of the sweep, so its rank correlation falls short of the bar; "
                                       "benchmarks/RESULTS.md",
}


def data_checks_line(concept: str, checks: dict[str, bool]) -> tuple[str, bool]:
    """The checks line of one ``--data`` concept, and whether it passes: a check the
    shipped weights are known to miss says so and why, and does not fail it."""
    words, passed = [], True
    for name, ok in checks.items():
        known = KNOWN_DATA_RESULTS.get((concept, name))
        if ok:
            words.append(f"{name} ok")
        elif known is not None:
            words.append(f"{name} not met (known: {known})")
        else:
            words.append(f"{name} FAILED")
            passed = False
    return "  checks: " + ", ".join(words), passed


def cmd_toy_check(args: argparse.Namespace) -> int:
    from steering_core.toy.known_effect import known_effect_check

    if args.seeds < 2 or args.points < 3 or not 1 <= args.seconds <= 30:
        raise UserError("--seeds must be at least 2, --points at least 3, --seconds within 1..30")
    from steering_core.toy.captions import CLASSES

    data_concepts = [c.strip() for c in args.data.split(",") if c.strip()]
    unknown = [c for c in data_concepts if c not in CLASSES]
    if unknown:
        raise UserError(f"--data: no labelled world for {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
    report: dict[str, Any] = known_effect_check(seeds=args.seeds, points=args.points, seconds=args.seconds, method=args.method)
    if data_concepts:
        from steering_core.model.loading import load_model
        from steering_core.toy.known_effect import data_direction_check

        handle = load_model("toy", device="cpu")
        report["data"] = {}
        for concept in data_concepts:
            check: dict[str, Any] = data_direction_check(handle, concept, seeds=args.seeds, points=args.points,
                                                         seconds=args.seconds)
            report["data"][concept] = check
            line, passed = data_checks_line(concept, check["checks"])
            report["lines"] += [check["line"], line]
            report["passed"] = report["passed"] and passed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in report["lines"]:
            print(line)
    return 0 if report["passed"] else 1
