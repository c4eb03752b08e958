"""``steerbridge extract`` and ``analyze``: a concept's direction, from prompt pairs or
labelled audio, written as a vector file; and where in the model a concept lives."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .parsing import add_command, model_args
from .validators import (
    METHOD_NAMES,
    SITE_NAMES,
    CliError,
    check_clap,
    check_model,
    check_output_file,
    layers_arg,
    method_name,
    parse_layers,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from steering_core.extract.concepts import ConceptPreset
    from steering_core.extract.shards import SkippedFile

    from .parsing import Commands


def register(sub: Commands) -> None:
    p = add_command(sub, "extract", "write a steering-vector file for a concept",
                    "Extract a concept's direction from the model's activations and write it as a steering-vector "
                    "file (.safetensors, see docs/VECTORS.md) for render and serve. From a concept preset's prompt "
                    "pairs (--concept), or from labelled audio (--data).")
    model_args(p)
    p.add_argument("--concept", default=None, help="preset name (tempo, timbre, jazz_vs_rock, ...) or a concept .yaml file")
    p.add_argument("--data", default=None, help="labelled audio instead: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class to steer towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class to steer away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: concept name (default: <positive>_vs_<negative>)")
    p.add_argument("--window", type=positive_float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--cache", default=None, help="--data: activation cache folder (default: ~/.cache/steerbridge/activations)")
    engine_args(p)
    p.add_argument("--method", type=method_name, default="diffmean", help=" | ".join(METHOD_NAMES))
    p.add_argument("--site", default=None, choices=SITE_NAMES, help="where in each layer (default: the preset's)")
    p.add_argument("--layers", type=layers_arg, default=None,
                   help="layers from 0, e.g. 1,2 or 0-3 or all (default: the preset's span of the model)")
    p.add_argument("--frames", type=positive_int, default=50, help="frames generated per prompt")
    p.add_argument("--pool", default="mean", choices=("mean", "last"), help="how a prompt's frames are pooled")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt expansion and sampling")
    calibrate_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = add_command(sub, "analyze", "where concepts live: probes, clustering, influence, alpha sweeps, plots",
                    "For each layer: probe accuracy, k-means ARI/NMI, cosines between directions and the influence of "
                    "steering that layer alone; then an alpha sweep with audio metrics and CLAP scores. Writes "
                    "report.json, PNG plots and a vector on the recommended layers.")
    model_args(p)
    p.add_argument("--concept", action="append", default=[], help="concept preset or .yaml (repeatable)")
    p.add_argument("--data", default=None, help="labelled audio: one sub-folder of audio files per class")
    p.add_argument("--positive", default=None, help="--data: the class steering goes towards (default: the first)")
    p.add_argument("--negative", default=None, help="--data: the class it goes away from (default: the next)")
    p.add_argument("--name", default=None, help="--data: the concept's name (default: <positive>_vs_<negative>)")
    p.add_argument("--site", default=None, choices=SITE_NAMES,
                   help="where in each layer (default: the preset's, or resid_post)")
    p.add_argument("--frames", type=positive_int, default=25, help="frames generated per prompt")
    p.add_argument("--window", type=positive_float, default=10.0, help="--data: window length in seconds")
    p.add_argument("--data-prompt", default=None, help="--data: text prompt while teacher-forcing (default: none)")
    p.add_argument("--cache", default=None, help="activation cache folder (default: ~/.cache/steerbridge/activations)")
    engine_args(p)
    p.add_argument("--sweep-points", type=positive_int, default=5, help="alphas across the concept's range (2 or more)")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds per sweep point")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per sweep clip")
    p.add_argument("--prompt", default="an ambient synth piece with drums", help="prompt for the sweep")
    p.add_argument("--clap", default="tiny",
                   help="CLAP hub id or folder (e.g. laion/clap-htsat-unfused) | tiny (RANDOM weights: plumbing only, "
                        "its plots say so) | none")
    p.add_argument("--write-back", action="store_true", help="also write <concept>.yaml with the recommended layers")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip measuring the knob ranges, the cross-effect matrix and the selective vectors")
    p.add_argument("--calibrate-seeds", type=positive_int, default=3, help="seeds per calibration alpha")
    p.add_argument("--calibrate-seconds", type=positive_float, default=3.0, help="seconds per calibration clip")
    p.add_argument("--calibrate-span", type=positive_float, default=8.0, help="largest |alpha| calibration tries")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_analyze)


def engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="--data: who pools the windows: this process, or a Ray cluster (pip install 'steerbridge[scale]')")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: the cluster (auto: the one `ray start` made here; host:port: its head node); "
                        "default: a Ray started for this run on this machine")
    p.add_argument("--ray-workers", type=positive_int, default=None,
                   help="--engine ray: model copies (default: one per GPU, else one per CPU but one)")


def calibrate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (see README, 'Knobs that mean what they say')")
    g.add_argument("--calibrate", action="store_true",
                   help="measure the knob's range (alpha_range) by sweeping alpha; without --layers the layers too")
    g.add_argument("--selective", default=None, metavar="CONCEPTS",
                   help="comma-separated concepts the vector must leave alone (e.g. timbre): orthogonalise against "
                        "them if that measures better; implies --calibrate")
    g.add_argument("--calibrate-prompt", default=None, help="prompt for the sweeps (default: serve's)")
    g.add_argument("--calibrate-seeds", type=positive_int, default=4, help="seeds per alpha")
    g.add_argument("--calibrate-seconds", type=positive_float, default=3.0, help="seconds per clip")
    g.add_argument("--calibrate-span", type=positive_float, default=8.0, help="largest |alpha| tried")


def check_engine(args: argparse.Namespace) -> None:
    """``--engine ray`` without Ray is one line, before the model loads."""
    if args.engine == "ray":
        if not args.data:
            raise CliError("--engine ray pools labelled audio; give --data")
        from steering_core.extract.ray_engine import require_ray

        require_ray()
    elif args.ray_address or args.ray_workers:
        raise CliError("--ray-address and --ray-workers go with --engine ray")


def cmd_extract(args: argparse.Namespace) -> int:
    from steering_core.extract.concepts import load_concept

    if bool(args.concept) == bool(args.data):
        raise CliError("give --concept (a preset or .yaml) or --data (a folder per class), not both")
    check_output_file(args.out, "--out")
    check_model(args.model)
    check_engine(args)
    if args.data and (args.calibrate or args.selective):
        raise CliError("--calibrate and --selective go with --concept: a preset concept has a measure that says what "
                       "its knob should move (tempo: onset rate, timbre: spectral centroid)")
    if args.data:
        if not Path(args.data).is_dir():
            raise CliError(f"--data {args.data}: no such folder (it wants one sub-folder of audio files per class)")
        return _extract_from_audio(args)
    preset = load_concept(args.concept)  # a bad name or file is reported before the model loads
    against = tuple(n for n in (args.selective or "").split(",") if n)
    for name in against:
        load_concept(name)
    if args.calibrate or against:
        return _extract_calibrated(args, preset, against)

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


def _extract_calibrated(args: argparse.Namespace, preset: ConceptPreset, against: tuple[str, ...]) -> int:
    from steering_core.model.loading import load_model

    from ..live.options import DEFAULT_PROMPT
    from ..tools.calibrate import CalibrateOptions, calibrated

    if args.site and args.site != preset.site:
        raise CliError("--calibrate uses the preset's site; leave --site out or edit the preset")
    handle = load_model(args.model, args.device, args.dtype)
    layers = _layers_on(handle.num_layers, args.layers, args.model)
    options = CalibrateOptions(prompt=args.calibrate_prompt or DEFAULT_PROMPT, seeds=args.calibrate_seeds,
                               seconds=args.calibrate_seconds, span=args.calibrate_span, method=args.method,
                               frames=args.frames, selective=against)
    vector, lines = calibrated(handle, preset, layers, options)
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r}, {vector.method} at {vector.site}, layers {list(vector.layers)}, "
          f"calibrated alpha range {vector.alpha_range[0]:+g}..{vector.alpha_range[1]:+g}")
    for line in lines:
        print("  " + line)
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

    from ..tools.analyze import AnalyzeOptions, activations_from_data, vector_on_layers

    handle = load_model(args.model, args.device, args.dtype)
    options = AnalyzeOptions(device=args.device, data=args.data, positive=args.positive, negative=args.negative,
                             name=args.name, site=args.site, window_s=args.window, cache=args.cache, engine=args.engine,
                             ray_address=args.ray_address, ray_workers=args.ray_workers)
    acts = activations_from_data(handle, options)
    layers = _layers_on(handle.num_layers, args.layers, args.model)
    chosen = list(range(handle.num_layers)) if layers is None else list(layers)
    vector = vector_on_layers(handle, acts, chosen, method=args.method)
    out = vector.save(args.out)
    print(f"wrote {out}: concept {vector.concept!r} ({acts.positive_label} vs {acts.negative_label}), {vector.method} "
          f"at {vector.site}, layers {chosen}, {vector.n_pos}+{vector.n_neg} audio windows")
    _print_skipped(acts.skipped)
    return 0


def _print_skipped(skipped: list[SkippedFile]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}:")
        for bad in skipped:
            print(f"  {bad.path}: {bad.reason}")


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.sweep_points < 2:
        raise CliError("--sweep-points must be 2 or more")
    if bool(args.concept) == bool(args.data):
        raise CliError("give --concept (one or more presets) or --data (a folder per class), not both")
    if args.data and not Path(args.data).is_dir():
        raise CliError(f"--data {args.data}: no such folder (it wants one sub-folder of audio files per class)")
    check_model(args.model)
    check_engine(args)
    check_clap(args.clap)
    from steering_core.extract.concepts import load_concept

    for concept in args.concept:
        load_concept(concept)
    from steering_core.extract.shards import SkippedFile

    from ..tools.analyze import AnalyzeOptions, run_analyze

    options = AnalyzeOptions(
        model=args.model, device=args.device, dtype=args.dtype, concepts=args.concept, data=args.data,
        positive=args.positive, negative=args.negative, name=args.name, site=args.site, frames=args.frames,
        window_s=args.window, data_prompt=args.data_prompt, sweep_points=args.sweep_points, seeds=args.seeds,
        seconds=args.seconds, prompt=args.prompt, clap=None if args.clap == "none" else args.clap,
        write_back=args.write_back, cache=args.cache, engine=args.engine, ray_address=args.ray_address,
        ray_workers=args.ray_workers, calibrate=not args.no_calibrate, calibrate_seeds=args.calibrate_seeds,
        calibrate_seconds=args.calibrate_seconds, calibrate_span=args.calibrate_span)
    out = Path(args.out)
    report = run_analyze(options, out)
    print(f"wrote {out / 'report.json'} and plots to {out}/")
    for name, entry in report["concepts"].items():
        best = entry["layers"][entry["recommended_layers"][0]]
        print(f"  {name}: recommended layers {entry['recommended_layers']} (probe accuracy {best['acc_logistic']:.2f}, "
              f"NMI {best['nmi']:.2f}); vector {entry['vector']}" + (f", preset {entry['preset']}" if "preset" in entry else ""))
        _print_skipped([SkippedFile(**bad) for bad in entry.get("skipped_files", [])])
    for name, cal in report.get("calibration", {}).get("concepts", {}).items():
        print(f"  {name}: " + cal.get("line", cal.get("skipped", "")))
    for name, sel in report.get("calibration", {}).get("selective", {}).items():
        if "chosen" in sel:
            kept = f" -> {sel['vector']}" if "vector" in sel else " (as is measured best)"
            print(f"  {name} selective: {sel['chosen']}{kept}")
    return 0
