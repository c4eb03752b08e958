"""A set of stems in the live server: one batched engine, a stem a row.

``open_stems`` builds what ``serve`` needs for the stems of ``setfile.StemSet``: one
``StemStream`` (every stem a row of one batch: one forward pass a step for all of them,
each with its own prompt, seed and knobs), its ``StemPerformance``, the ``ControlState``
with each stem's asked state and its ``/stem/<name>/...`` rows, the output (a JACK port
pair per stem, a channel pair per stem on a sound card as far as they fit, or the mix)
and the ``StemMix`` path (each stem's own chain and recording). The engine, the clock, OSC, MIDI and scenes are the one-stream
server's: transport and clock are shared, so every stem starts, stops and lands on the
bar together.

Ownership is the one-stream server's too: each stem's asked state is ``ControlState``'s,
its played knobs are the steerer's per-stream table (row = stem), its mute and solo are
the mix's, set on the engine thread from the events it applies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steering_core.errors import UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.settings import SamplingSettings, settings_from_controls
from steering_core.stream.stem_performance import StemPerformance
from steering_core.stream.stem_stream import StemStream

from .chains import load_chain
from .control import ConceptKnob, ControlState, StemView
from .device_channels import stem_pair
from .options import ServeOptions
from .outputs import DeviceOutput, Output, open_output
from .probe_loop import attach_probe_taps
from .scheduling import fill_bpm
from .setfile import MAX_STEMS, StemSet, StemSpec, load_set_file, parse_stem_args
from .stem_mix import StemMix, stem_recording

log = logging.getLogger("steerbridge.serve")


def stem_set_of(options: ServeOptions) -> StemSet | None:
    """The stems ``--stem`` or ``--set`` ask for (None: the one-stream server)."""
    if options.stems and options.set_file:
        raise UserError("give the stems with --stem or with --set, not both")
    if options.set_file:
        return load_set_file(options.set_file, options.seed, options.chain)
    if options.stems:
        return parse_stem_args(options.stems, options.seed, options.chain)
    return None


@dataclass
class LiveStems:
    """What ``open_stems`` built, for the server to wire."""

    #: Each row's stem, spare rows (``spare<row>``) included; ``stem_live`` changes a row's.
    specs: list[StemSpec]
    stream: StemStream
    performance: StemPerformance
    control: ControlState
    output: Output
    path: StemMix

    #: The rows no stem holds (``serve --stem-spares``): /stem/add gives one to a new stem.
    spare: set[int]

    @property
    def names(self) -> list[str]:
        """The playing stems' names, in row order."""
        return [s.name for row, s in enumerate(self.specs) if row not in self.spare]


def stem_knobs(spec: StemSpec, vectors: Sequence[SteeringVector]) -> dict[str, ConceptKnob]:
    """A stem's knobs: each concept's range, the stem's own where it gives one."""
    loaded = {v.concept for v in vectors}
    unknown = sorted(set(spec.knobs) - loaded)
    if unknown:
        raise UserError(f"stem {spec.name}: knobs for {unknown[0]!r}, which no vector holds "
                        f"(loaded: {', '.join(sorted(loaded)) or 'none'})")
    return {v.concept: ConceptKnob(v.concept, spec.knobs.get(v.concept, v.alpha_range)) for v in vectors}


#: What a spare row plays, unheard, until a stem takes it over on a bar line with its own prompt.
SPARE_PROMPT = "quiet ambient pad"


def spare_specs(specs: Sequence[StemSpec], spares: int, chain: str) -> list[StemSpec]:
    """``spares`` spare rows after ``specs``, each with a seed no stem of the set has."""
    if len(specs) + spares > MAX_STEMS:
        raise UserError(f"--stem-spares {spares}: a set plays at most {MAX_STEMS} rows ({len(specs)} stems)")
    seed = max(s.seed for s in specs) + 1
    return [StemSpec(f"spare{len(specs) + i}", SPARE_PROMPT, seed + i, chain) for i in range(spares)]


def open_stems(handle: MusicGenHandle, options: ServeOptions, stems: StemSet, vectors: Sequence[SteeringVector],
               steerer: Steerer, settings: SamplingSettings) -> LiveStems:
    playing = len(stems.stems)
    specs = [*stems.stems, *spare_specs(stems.stems, options.stem_spares, options.chain)]
    chains = [load_chain(s.chain) for s in specs]  # a bad chain is refused before anything plays
    knobs = [stem_knobs(s, vectors) for s in specs]
    prompts = [fill_bpm(s.prompt, options.bpm) for s in specs]
    stream = StemStream(handle, prompts, seeds=[s.seed for s in specs], settings=settings, steerer=steerer,
                        cuda_graphs=options.cuda_graphs or "auto")
    own = [settings_from_controls(s.gen, settings) for s in specs]
    for row, row_settings in enumerate(own):
        stream.set_row_settings(row, row_settings)
    performance = StemPerformance(stream, steerer, smoothing_ms=options.smoothing_ms)
    taps = attach_probe_taps(stream, vectors)  # each row's probes, read before the first step
    views = [StemView(s.name, k, s.prompt, settings=vars(o).copy(), active=i < playing)
             for i, (s, k, o) in enumerate(zip(specs, knobs, own, strict=True))]
    control = ControlState([ConceptKnob.of(v) for v in vectors], specs[0].prompt, settings,
                           vocab_size=handle.decoder_config.vocab_size, stems=views, probe_targets=taps is not None)
    names = [s.name for s in specs]
    # Spare rows get their port pair too (spare<row>_L/_R, silent), renamed on /stem/add and back on remove.
    output = open_output(options.audio_out, options.jack_connect, stems=names, stem_channels=options.stem_channels)
    path = StemMix(handle.sample_rate, output.sample_rate, names, chains, options.record, spares=options.stem_spares)
    log.info("%d stems in one batch: %s", len(specs), "; ".join(f"{s.name} {s.prompt!r} (seed {s.seed})"
                                                                 for s in specs))
    return LiveStems(specs, stream, performance, control, output, path, set(range(playing, len(specs))))


def stems_header(live: LiveStems) -> list[dict[str, Any]]:
    """The performance log's ``stems``, in row order: what a replay builds again."""
    return [{"name": s.name, "prompt": p, "seed": s.seed, "chain": s.chain, "gen": dict(s.gen),
             **({"spare": True} if row in live.spare else {})}
            for row, (s, p) in enumerate(zip(live.specs, live.stream.prompts, strict=True))]


def stems_status(live: LiveStems, record: str | None, loops: Mapping[str, Any] | None = None,
                 row_probes: Sequence[Mapping[str, float]] = ()) -> dict[str, Any]:
    """``/status/json``'s ``stems``: each stem's asked and played state, by name; with the
    engine's target loops (``loops``: ``target_knobs``, keyed ``<concept>`` on row 0 and
    ``<row>:<concept>`` past it) and probe readings (by row), each stem's own."""
    steerer = live.performance.steerer
    out: dict[str, Any] = {}
    asked_by_name = live.control.snapshot()["stems"]
    for row, (spec, voice) in enumerate(zip(live.specs, live.path.voices, strict=True)):
        asked = asked_by_name.get(spec.name)
        if row in live.spare or asked is None:
            continue
        out[spec.name] = {
            "row": row, "prompt": asked["prompt"], "seed": spec.seed, "chain": spec.chain,
            "targets": asked["targets"], "knobs": asked["knobs"], "enabled": asked["enabled"],
            "alphas": {k: round(v, 4) for k, v in (steerer.alphas(row) if steerer else {}).items()},
            "mute": asked["mute"], "solo": asked["solo"], "audible": voice.gain > 0.0, "fault": voice.fault,
            "ports": [f"{spec.name}_L", f"{spec.name}_R"] if hasattr(live.output, "rename_stem") else None,
            # On a sound card: its pair (1-based), None where it is only in the mix (device_channels.py).
            "channels": stem_pair(row, live.output.channels) if isinstance(live.output, DeviceOutput) else None,
            "recording": str(stem_recording(record, spec.name)) if record else None,
            "recording_from_sample": voice.recorded_from,
            "target_knobs": {key.rpartition(":")[2]: loop for key, loop in (loops or {}).items()
                             if int(key.rpartition(":")[0] or 0) == row},
            **({"probes": dict(row_probes[row])} if row < len(row_probes) else {}),
        }
    return out


def rows_sha256(codes: Any) -> list[str]:
    """Each row's token hash, as the engine's end line writes it."""
    return [hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in codes.cpu().contiguous()]
