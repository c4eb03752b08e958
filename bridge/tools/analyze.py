"""``steerbridge analyze``: where a concept lives, and what steering it does to the sound.

1. Activations at every layer: from a concept preset's prompt pairs, or from labelled
   audio (a folder per class, teacher-forced, cached on disk).
2. Per layer: probe accuracy (logistic and MSE, cross-validated), k-means ARI and NMI,
   and influence: how far steering that layer alone moves the next-token predictions
   (``steering_core/evaluate/influence.py``).
   Cosines between directions: the methods against each other, and concepts against
   each other, layer by layer.
3. A layer recommendation, and a vector on those layers (``<concept>.safetensors``,
   ready for ``serve --vectors``); ``--write-back`` also writes the preset with the
   layers named (``<concept>.yaml``, ready for ``extract --concept``).
4. Calibration (``analyze_calibration.py``): each knob's range measured (the vector's
   ``alpha_range``), the cross-effect matrix (what every knob moves) and, with two concepts
   or more, each one made selective against the others, with the matrix after.
5. An alpha sweep over the (calibrated) range with several seeds: spectral centroid, RMS,
   onset rate, tempo and CLAP zero-shot scores against the concept's labels.

Everything lands in ``report.json`` plus PNGs: ``layers_<concept>.png``, ``influence_<concept>.png``,
``sweep_<concept>_<metric>.png``, ``spectrograms_<concept>.png``, ``calibration_<concept>.png``
and ``cross_effects.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from steering_core.audio import write_wav
from steering_core.errors import UserError
from steering_core.evaluate.clap import ClapScorer
from steering_core.evaluate.influence import layer_influence
from steering_core.evaluate.metrics import describe
from steering_core.evaluate.probes import cosine_matrix, recommend_layers, score_layers
from steering_core.extract.concepts import ConceptPreset, check_name, load_concept
from steering_core.extract.extraction import METHODS, collect_activations, vector_from_activations
from steering_core.extract.labelled_audio import Engine, collect_labelled, local_engine
from steering_core.extract.shards import SkippedFile
from steering_core.model.loading import MusicGenHandle, load_model
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.render import render

from .analyze_calibration import CalibrationSettings, calibrate_concepts
from .plots import influence_bars, layer_curves, metric_band, spectrogram_grid

log = logging.getLogger("steerbridge.analyze")

METRICS = ("centroid_hz", "rms", "onset_rate", "tempo_bpm")


#: On every plot and report of the random-weight CLAP, so a plot is never read as a measurement.
RANDOM_CLAP_NOTE = "CLAP 'tiny' has RANDOM weights: plumbing only, these scores mean nothing (--clap <hub id>)"

@dataclass
class AnalyzeOptions:
    model: str = "toy"
    device: str = "auto"
    dtype: str = "auto"
    concepts: Sequence[str] = ()
    data: str | None = None
    positive: str | None = None
    negative: str | None = None
    name: str | None = None
    site: str | None = None
    frames: int = 25
    window_s: float = 10.0
    data_prompt: str | None = None
    sweep_points: int = 5
    seeds: int = 2
    seconds: float = 2.0
    influence_frames: int = 50
    prompt: str = "an ambient synth piece with drums"
    clap: str | None = "tiny"
    write_back: bool = False
    cache: str | None = None
    engine: str = "local"  # --data: local | ray
    ray_address: str | None = None
    ray_workers: int | None = None
    calibrate: bool = True  # measure each knob's range, the cross-effect matrix and selective vectors
    calibrate_seeds: int = 3
    calibrate_seconds: float = 3.0
    calibrate_span: float = 8.0


@dataclass
class ConceptActivations:
    name: str
    positive: torch.Tensor
    negative: torch.Tensor
    all: torch.Tensor
    labels: list[str]
    groups: list[int]  # rows that belong together in cross-validation (a prompt pair, a file)
    positive_label: str
    negative_label: str
    preset: ConceptPreset | None
    alpha_range: tuple[float, float]
    site: str
    skipped: list[SkippedFile] = dataclasses.field(default_factory=list)  # --data: files that gave no windows


def activations_from_preset(handle: MusicGenHandle, name: str, o: AnalyzeOptions) -> ConceptActivations:
    preset = load_concept(name)
    site = o.site or preset.site
    pairs = preset.pairs()
    pos = collect_activations(handle, [p for p, _ in pairs], desc=f"{preset.name}: {preset.positive_label}", site=site,
                              frames=o.frames)
    neg = collect_activations(handle, [n for _, n in pairs], desc=f"{preset.name}: {preset.negative_label}", site=site,
                              frames=o.frames)
    labels = [preset.positive_label] * len(pos) + [preset.negative_label] * len(neg)
    pairs_index = list(range(len(pos))) + list(range(len(neg)))  # pair i: positive i and negative i
    return ConceptActivations(preset.name, pos, neg, torch.cat([pos, neg]), labels, pairs_index, preset.positive_label,
                              preset.negative_label, preset, preset.alpha_range, site)


def activations_from_data(handle: MusicGenHandle, o: AnalyzeOptions) -> ConceptActivations:
    site = o.site or "resid_post"
    engine: Engine = local_engine
    if o.engine == "ray":
        from steering_core.extract.ray_engine import ray_engine

        engine = ray_engine(o.ray_address, o.ray_workers, o.device)
    elif o.engine != "local":
        raise UserError(f"unknown engine {o.engine!r}; choose local or ray")
    data = collect_labelled(handle, o.data or "", site=site, window_s=o.window_s, prompt=o.data_prompt, cache=o.cache,
                            engine=engine)
    positive = o.positive or data.classes[0]
    negative = o.negative or next(c for c in data.classes if c != positive)
    pos, neg = data.split(positive, negative)
    name = check_name(o.name or f"{positive}_vs_{negative}", "concept name")
    return ConceptActivations(name, pos, neg, data.activations, data.labels, data.files, positive, negative, None,
                              (-4.0, 4.0), site, data.skipped)


def vector_on_layers(handle: MusicGenHandle, c: ConceptActivations, layers: list[int],
                     method: str = "diffmean") -> SteeringVector:
    """The vector ``extract`` would write from the same activations (one code path)."""
    return vector_from_activations(handle, c.name, c.positive, c.negative, layers, method=method, site=c.site,
                                   preset=c.preset, prompt_sha256=c.preset.prompt_sha256() if c.preset else "",
                                   alpha_range=c.alpha_range)


def _sweep(handle: MusicGenHandle, c: ConceptActivations, vector: SteeringVector, o: AnalyzeOptions, out: Path,
           clap: ClapScorer | None) -> dict[str, Any]:
    lo, hi = vector.alpha_range  # calibrated, when calibration ran: what the knob spans
    alphas = [float(a) for a in np.linspace(lo, hi, o.sweep_points)]
    labels = [f"{c.positive_label} music", f"{c.negative_label} music"]
    values: dict[str, np.ndarray] = {m: np.zeros((len(alphas), o.seeds)) for m in METRICS}
    clap_pos = np.zeros((len(alphas), o.seeds))
    grid = []
    jobs = [(i, a, s) for i, a in enumerate(alphas) for s in range(o.seeds)]
    for i, alpha, seed in tqdm(jobs, desc=f"{c.name}: alpha sweep", unit="clip"):
        audio = render(handle, o.prompt, o.seconds, seed=seed, vectors=[vector], alphas={c.name: alpha})
        for metric, value in describe(audio, handle.sample_rate).items():
            values[metric][i, seed] = value
        if clap is not None:
            clap_pos[i, seed] = clap.scores([audio], handle.sample_rate, labels)[0, 0]
        if seed == 0:
            grid.append((f"α={alpha:+.1f}", audio))
            write_wav(out / f"sweep_{c.name}_{alpha:+.1f}.wav", audio, handle.sample_rate)
    if clap is not None:
        values["clap_positive"] = clap_pos
    plots = []
    for metric, table in values.items():
        title = f"{c.name}: {metric} vs alpha ({o.seeds} seeds)"
        if metric == "clap_positive" and clap is not None and clap.spec == "tiny":
            title += f"\n{RANDOM_CLAP_NOTE}"
        plots.append(metric_band(alphas, table, metric, out / f"sweep_{c.name}_{metric}.png", title=title).name)
    plots.append(spectrogram_grid(grid, handle.sample_rate, out / f"spectrograms_{c.name}.png",
                                  title=f"{c.name} sweep, seed 0").name)
    return {
        "alphas": alphas, "seeds": o.seeds, "seconds": o.seconds, "prompt": o.prompt,
        "clap": None if clap is None else {"model": clap.spec, "labels": labels,
                                            "note": "score = softmax probability of the first label"
                                                    + (f"; {RANDOM_CLAP_NOTE}" if clap.spec == "tiny" else "")},
        "metrics": {m: {"mean": t.mean(axis=1).round(4).tolist(), "std": t.std(axis=1).round(4).tolist(),
                        "per_seed": t.round(4).tolist()} for m, t in values.items()},
        "plots": plots,
    }


def run_analyze(o: AnalyzeOptions, out: Path) -> dict[str, Any]:
    if bool(o.concepts) == bool(o.data):
        raise UserError("give --concept (one or more presets) or --data <folder>, not both")
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model(o.model, o.device, o.dtype)
    started = time.time()
    if o.concepts:
        concepts = [activations_from_preset(handle, name, o) for name in o.concepts]
    else:
        concepts = [activations_from_data(handle, o)]
    clap = ClapScorer(o.clap, handle.device) if o.clap else None
    report: dict[str, Any] = {"model": o.model, "model_config_sha256": handle.config_sha256,
                              "num_layers": handle.num_layers, "concepts": {}}
    best_directions: dict[int, dict[str, torch.Tensor]] = {}
    swept: list[tuple[ConceptActivations, SteeringVector]] = []
    for c in concepts:
        scores = score_layers(c.all, c.labels, groups=c.groups)
        recommended = recommend_layers(scores)
        rows = [s.to_json() for s in scores]
        layer_plot = layer_curves(rows, recommended, out / f"layers_{c.name}.png",
                                  title=f"{c.name}: {c.positive_label} vs {c.negative_label} ({c.site})")
        method_dirs = {m: METHODS[m](c.positive, c.negative) for m in ("diffmean", "probe_logistic", "probe_mse")}
        method_cos = {layer: cosine_matrix({m: d[layer] for m, d in method_dirs.items()})
                      for layer in range(handle.num_layers)}
        for layer in range(handle.num_layers):
            best_directions.setdefault(layer, {})[c.name] = method_dirs["diffmean"][layer]
        influence_alpha = max(abs(a) for a in c.alpha_range)
        influence = layer_influence(handle, method_dirs["diffmean"], influence_alpha, prompt=o.prompt,
                                    frames=o.influence_frames, seeds=range(o.seeds), site=c.site)
        influence_plot = influence_bars(
            influence, recommended, out / f"influence_{c.name}.png",
            title=f"{c.name}: KL when one layer alone is steered, α={influence_alpha:g} (gold: recommended)")
        vector = vector_on_layers(handle, c, recommended)
        vector_path = vector.save(out / f"{c.name}.safetensors")
        entry: dict[str, Any] = {
            "positive": c.positive_label, "negative": c.negative_label, "site": c.site,
            "n_positive": len(c.positive), "n_negative": len(c.negative), "classes": sorted(set(c.labels)),
            "layers": rows, "recommended_layers": recommended, "vector": vector_path.name,
            "method_cosines": {str(k): v for k, v in method_cos.items()},
            "influence": {"alpha": influence_alpha, "kl_per_layer": [round(v, 6) for v in influence],
                          "note": "mean KL(steered || plain) of next-token distributions, teacher-forced, "
                                  "the diffmean direction at one layer alone"},
            "plots": [layer_plot.name, influence_plot.name],
        }
        if c.skipped:
            entry["skipped_files"] = [dataclasses.asdict(bad) for bad in c.skipped]
        if o.write_back and c.preset is not None:
            entry["preset"] = write_back_preset(c.preset, recommended, out).name
        best = scores[recommended[0]]
        log.info("%s: recommended layers %s (probe accuracy %.2f at layer %d)", c.name, recommended,
                 max(best.acc_logistic, best.acc_mse), recommended[0])
        chance_layers = [s.layer for s in scores if s.at_chance]
        if best.at_chance:
            entry["caveat"] = (f"no layer reads {c.name} above chance ({best.chance:.2f}): the recommendation "
                               "is arbitrary and the vector likely steers nothing")
            log.warning("%s: %s", c.name, entry["caveat"])
        elif chance_layers:
            entry["layers_at_chance"] = chance_layers
            log.info("%s: layers %s read it no better than chance (%.2f)", c.name, chance_layers, best.chance)
        swept.append((c, vector))
        report["concepts"][c.name] = entry
    if o.calibrate:
        calibrated, report["calibration"] = calibrate_concepts(
            handle, [v for _, v in swept], lambda name, layers: [vector_on_layers(handle, c, list(layers))
                                                                 for c in concepts if c.name != name],
            CalibrationSettings(prompt=o.prompt, seeds=o.calibrate_seeds, seconds=o.calibrate_seconds,
                                span=o.calibrate_span), out)
        swept = [(c, calibrated.get(c.name, v)) for c, v in swept]
        for c, v in swept:
            v.save(out / f"{c.name}.safetensors")
            report["concepts"][c.name]["alpha_range"] = list(v.alpha_range)
    for c, v in swept:
        report["concepts"][c.name]["sweep"] = _sweep(handle, c, v, o, out, clap)
    if len(concepts) > 1:
        report["concept_cosines"] = {str(layer): cosine_matrix(d) for layer, d in best_directions.items()}
    report["seconds_taken"] = round(time.time() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def write_back_preset(preset: ConceptPreset, layers: Sequence[int], out: Path) -> Path:
    """The preset as a file with the recommended layers named (``extract --concept`` it)."""
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(preset).items()}
    raw["slots"] = {k: list(v) for k, v in preset.slots.items()}
    raw["layers"] = [int(x) for x in layers]
    path = out / f"{preset.name}.yaml"
    path.write_text("# written by steerbridge analyze: layers chosen by probe accuracy and clustering\n"
                    + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path
