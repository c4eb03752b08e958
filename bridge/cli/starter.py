"""The first commands a newcomer runs, none of which needs a model download:
``demo`` (steering you can hear on the toy model), ``devices`` (the audio outputs and
MIDI inputs serve can use) and ``save-tiny`` (the tiny model as a checkpoint folder)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..live.options import DEFAULT_MODEL, ServeOptions
from .parsing import add_command
from .validators import CliError, check_output_file, positive_float

if TYPE_CHECKING:
    from .parsing import Commands


def register(sub: Commands) -> None:
    p = add_command(sub, "devices", "list audio outputs and MIDI inputs",
                    "List the audio outputs (for serve --audio-out) and MIDI inputs (for serve --midi-in) this "
                    "machine has.")
    p.add_argument("--midi-api", default=ServeOptions.midi_api, choices=("auto", "jack", "alsa"), help="MIDI back end")
    p.set_defaults(func=cmd_devices)

    p = add_command(sub, "demo", f"zero-setup showcase: tempo and timbre steering on the built-in {DEFAULT_MODEL} model",
                    "Extract the tempo and timbre vectors, render an alpha sweep of each over several seeds on a "
                    "neutral prompt, and write to --out: one WAV per alpha, <concept>_<metric>_vs_alpha.png (mean and "
                    "spread across seeds), <concept>_spectrograms.png and demo.json (every measured number). Prints "
                    "the measured effect, one line per concept. No download, no GPU.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to steer")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--seconds", type=positive_float, default=4.0, help="length of each clip in seconds")
    p.add_argument("--seed", type=int, default=7, help="sampling seed (the --seeds renders of an alpha are one batch)")
    p.add_argument("--seeds", type=int, default=5, help="renders per alpha (2 or more); the plots draw their spread")
    p.add_argument("--points", type=int, default=7, help="alphas in each sweep (3 or more)")
    p.set_defaults(func=cmd_demo)

    p = add_command(sub, "save-tiny", "write the built-in tiny model to a folder",
                    "Write the built-in tiny model (random weights) as a save_pretrained folder, which loads with "
                    "--model <folder> through the same from_pretrained path as a real checkpoint.")
    p.add_argument("folder", help="folder to write (created if missing)")
    p.set_defaults(func=cmd_save_tiny)


def cmd_devices(args: argparse.Namespace) -> int:
    from ..live.midi import MidiMapError, list_midi_inputs
    from ..live.outputs import OutputError, list_audio_devices

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
    from ..tools.demo import run_demo

    run_demo(Path(args.out), model=args.model, seconds=args.seconds, seed=args.seed, seeds=args.seeds,
             points=args.points)
    return 0


def cmd_save_tiny(args: argparse.Namespace) -> int:
    check_output_file(str(Path(args.folder) / "config.json"), "save-tiny")
    from steering_core.model.loading import _quiet_transformers
    from steering_core.model.tiny import save_tiny

    with _quiet_transformers():  # pad = bos = vocab_size is MusicGen's design, not a fault to warn about
        folder = save_tiny(args.folder)
    print(f"wrote the tiny model to {folder}; load it with --model {folder}")
    return 0
