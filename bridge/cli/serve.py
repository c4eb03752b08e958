"""``steerbridge serve``: its options, read off ``ServeOptions`` and ``EngineSettings``.

Each option's ``dest`` is the name of the field it sets and its default is that field's
default, so the command line and the dataclasses cannot disagree; ``cmd_serve`` builds
both from the parsed namespace by field name (``--quiet`` is ``status_line`` off).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from steering_core.errors import UserError

from ..clock.grid import Quantize, exact_bpm
from ..clock.source import SOURCES, Meter
from ..live.device_channels import parse_stem_channels
from ..live.options import EngineSettings, ServeOptions
from .parsing import add_command, cuda_graphs_arg, model_args
from .validators import (
    check_model,
    check_output_file,
    check_udp_port_free,
    check_vector_paths,
    non_negative_float,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
    prompt_text,
)

if TYPE_CHECKING:
    from .parsing import Commands

SERVE = ServeOptions()
ENGINE = SERVE.engine


def _option(p: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, defaults: ServeOptions | EngineSettings,
            dest: str | None = None,
            **kwargs: Any) -> None:
    """``flag`` setting the field ``dest`` (default: the flag's own name) of ``defaults``'
    class, with that field's default."""
    own = flag.removeprefix("--").replace("-", "_")
    if dest is not None:
        kwargs["metavar"] = own.upper()  # the help shows the flag's name, not the field's
    name = dest or own
    p.add_argument(flag, dest=name, default=getattr(defaults, name), **kwargs)


def port_list(text: str) -> tuple[str, ...]:
    """``--jack-connect a,b`` -> ("a", "b")."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argument type that checks the text with ``parse`` (one line if it fails) and keeps the text."""
    def check(text: str) -> str:
        try:
            parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _stem_channels(text: str) -> int | None:
    try:
        return parse_stem_channels(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tempo(text: str) -> float:
    try:
        return float(exact_bpm(float(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Commands) -> None:
    p = add_command(sub, "serve", "the live bridge: OSC and MIDI knobs steer the music while it plays",
                    "Generate music endlessly and play it, while OSC messages and MIDI knobs steer it. The status line "
                    "shows the playing time, rtf (audio seconds generated per second; below 1 the music stutters), buf "
                    "(audio ready), xruns (times the sound card ran dry), control latency and the alphas. OSC "
                    "addresses: docs/OSC.md.")
    model_args(p, model_default=SERVE.model)
    _option(p, "--prompt", SERVE, type=prompt_text, help="text prompt to start with")
    _option(p, "--seed", SERVE, type=int, help="sampling seed")
    _option(p, "--vectors", SERVE, action="append",
            help="vector file or folder (repeatable; default: timbre and tempo, extracted once and cached)")
    _option(p, "--osc-host", SERVE, help="address to listen on; 0.0.0.0 accepts other machines")
    _option(p, "--osc-port", SERVE, type=port_number, help="UDP port to listen on for OSC")
    _option(p, "--midi-in", SERVE, help="MIDI input port name (or part of it) | virtual | none")
    _option(p, "--midi-map", SERVE,
            help="controller map: generic, nanokontrol2, launchcontrol_xl, midimix, beatstep, a saved map or a .yaml")
    _option(p, "--midi-api", SERVE, choices=("auto", "jack", "alsa"), help="MIDI back end")
    _option(p, "--audio-out", SERVE,
            help="device number or name | default | none (a silent clock) | jack[:CLIENT] (JACK ports out_L/out_R)")
    _option(p, "--jack-connect", SERVE, type=port_list,
            help="JACK input ports the mix (out_L/out_R) connects to, comma-separated, left, right, left, ... "
                 "(e.g. system:playback_1,system:playback_2); stem pairs are left for the DAW")
    clock = p.add_argument_group("musical clock", "tempo, bar grid and transport: steerbridge's own, or a DAW's")
    _option(clock, "--sync", SERVE, choices=sorted(SOURCES),
            help="where tempo, position and play/stop come from (internal: our own clock at --bpm)")
    _option(clock, "--bpm", SERVE, type=_tempo, help="tempo to start with (a source that follows a DAW takes the DAW's)")
    _option(clock, "--meter", SERVE, type=_checked(Meter.parse), help="beats per bar / beat unit, such as 4/4 or 7/8")
    _option(clock, "--transport", ENGINE, choices=("follow", "ignore"),
            help="follow: the source's play enters on its next downbeat, its stop fades out; ignore: it does not")
    _option(clock, "--quantize", ENGINE, type=_checked(Quantize.parse),
            help="where scene recalls, morphs and prompt changes land: off | beat | bar | <n>bar (a message may "
                 "say its own, and knobs too)")
    _option(clock, "--tempo-lock", ENGINE, action="store_true",
            help="lock the tempo knob to the clock: tempo becomes a target at its tempo and beat (/sync/lock 1)")
    _option(clock, "--beat-warp", ENGINE, action="store_true",
            help="with the lock, lay each beat the model plays on the clock's grid, as a DAW's Beats warp does; "
                 "with a tempo target, on a grid at its tempo (/sync/lock/warp 1); one stream only")
    _option(p, "--chain", SERVE, help="effect chain: default, clean, space, lofi or a .yaml (a limiter always ends it)")
    stems = p.add_argument_group("stems", "several streams in one batch, each its own prompt, knobs, chain and "
                                 "JACK ports (README: Stems into separate DAW tracks)")
    _option(stems, "--stem", SERVE, dest="stems", action="append",
            help="a stem (repeatable): its OSC prefix /stem/NAME/..., JACK ports NAME_L/_R, seed --seed plus its index")
    _option(stems, "--set", SERVE, dest="set_file",
            help="a set file: stems with prompt, seed, chain and knob ranges, and the vectors they share")
    _option(stems, "--stem-spares", SERVE, type=non_negative_int,
            help="spare rows in the batch for stems added while playing (/stem/add); each costs a row's compute")
    _option(stems, "--stem-channels", SERVE, type=_stem_channels,
            help="a sound card's channels for the stems: auto (as many pairs as it has; the mix for ALSA's "
                 "default/pulse) or N: the mix on 1-2, each stem on the next pair, in the set's order")
    _option(p, "--record", SERVE, help="record the output to this .wav (valid even after Ctrl-C)")
    _option(p, "--log", SERVE, help="performance log (.jsonl; default: beside --record)")
    _option(p, "--scenes-dir", SERVE, help="where scenes are saved (default: ~/.local/share/steerbridge/scenes)")
    _option(p, "--duration", SERVE, type=positive_float, help="stop cleanly after this many seconds")
    _option(p, "--smoothing-ms", SERVE, type=non_negative_float, help="knob smoothing time constant")
    _option(p, "--buffer-ms", ENGINE, dest="ring_ms", type=positive_float,
            help="audio kept ready: more survives jitter, less reacts faster")
    _option(p, "--lookahead", ENGINE, dest="lookahead_frames", type=non_negative_int,
            help="frames of tokens generated ahead (rolled back on a change)")
    _option(p, "--codec-chunk", SERVE, type=positive_int,
            help="frames per codec decode (default: the model's own, 4 for toy): more cost less per frame "
                 "but arrive in bigger bursts (raise --buffer-ms with it); each adds up to 20 ms of latency")
    _option(p, "--guidance", SERVE, type=non_negative_float,
            help="classifier-free guidance scale: how closely the music follows the prompt")
    _option(p, "--temperature", SERVE, type=positive_float, help="sampling temperature")
    _option(p, "--top-k", SERVE, type=non_negative_int, help="sample from the k most likely tokens (0: no limit)")
    _option(p, "--threads", SERVE, type=positive_int,
            help="torch CPU threads (default: 1 for the built-in models, else torch's)")
    p.add_argument("--quiet", action="store_true", help="no status line")
    cuda_graphs_arg(p)
    p.set_defaults(func=cmd_serve)


def _fields_from(cls: type[Any], args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    return {f.name: given[f.name] for f in fields(cls) if f.name in given}


def cmd_serve(args: argparse.Namespace) -> int:
    check_model(args.model)
    check_vector_paths(args.vectors)
    for path, option in ((args.record, "--record"), (args.log, "--log")):
        if path is not None:
            check_output_file(path, option)
    from ..live.chains import load_chain
    from ..live.midimaps import load_map

    load_chain(args.chain)  # a wrong name lists the ones there are, before the model loads
    stem_names: list[str] = []
    if args.stems or args.set_file:  # a bad set file or chain is one line, before the model loads
        from ..live.stems import stem_set_of

        stem_set = stem_set_of(ServeOptions(stems=args.stems or [], set_file=args.set_file, seed=args.seed,
                                            chain=args.chain))
        for spec in stem_set.stems if stem_set is not None else ():
            load_chain(spec.chain)
        stem_names = [s.name for s in stem_set.stems] if stem_set is not None else []
    if args.stem_channels is not None and (not stem_names or args.audio_out.partition(":")[0] in ("jack", "none")):
        raise UserError("--stem-channels needs stems (--stem or --set) on a sound card; "
                        "--audio-out jack gives each stem its own ports")
    load_map(args.midi_map, stem_names)
    check_udp_port_free(args.osc_host, args.osc_port)
    if args.jack_connect and args.audio_out.partition(":")[0] != "jack":
        raise UserError("--jack-connect needs --audio-out jack")
    from ..live.serve import run_serve

    engine = EngineSettings(**_fields_from(EngineSettings, args))
    return run_serve(ServeOptions(**{**_fields_from(ServeOptions, args), "engine": engine,
                                     "status_line": not args.quiet}))
