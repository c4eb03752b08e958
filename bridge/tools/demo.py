"""``steerbridge demo``: steering you can hear, on the built-in ``toy`` model, no set-up.

For tempo and timbre: extract the concept's vector from its preset's prompt pairs,
render an alpha sweep over several seeds on a neutral prompt, and measure what a
listener would (onset rate for tempo, spectral centroid for timbre). Writes one WAV per
alpha, a spectrogram grid and a metric-versus-alpha plot with the spread across seeds
for each concept, ``demo.json`` with every number, and prints one line per concept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from steering_core.audio import write_wav
from steering_core.evaluate.steering_effects import CONCEPT_METRIC, steering_sweep
from steering_core.extract.concepts import load_concept
from steering_core.extract.extraction import extract_vector
from steering_core.model.loading import load_model
from steering_core.toy.known_effect import ALPHA_SPANS

from .demo_target import SETPOINTS, target_run
from .plots import metric_band, spectrogram_grid

log = logging.getLogger("steerbridge.demo")

NEUTRAL_PROMPT = "an instrumental piece with drums and a lead synth"
UNITS = {"onset_rate": "onsets per second", "centroid_hz": "spectral centroid (Hz)"}


def run_demo(out: Path, *, model: str = "toy", concepts: Sequence[str] = ("tempo", "timbre"), seconds: float = 4.0,
             seeds: int = 5, points: int = 7, seed: int = 0, prompt: str = NEUTRAL_PROMPT) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model(model)
    log.info("model %s: %d layers, d_model %d", model, handle.num_layers, handle.d_model)
    measured: dict[str, object] = {}
    summary: dict[str, object] = {"model": model, "prompt": prompt, "seconds": seconds, "seeds": seeds,
                                  "concepts": measured}
    lines = []
    for name in concepts:
        preset = load_concept(name)
        # One middle layer and the concept's measured alpha span: the protocol of the
        # known-effect check (steering_core/toy/known_effect.py).
        vector = extract_vector(handle, preset, frames=50, layers=(handle.num_layers // 2,), progress=True)
        vector_path = vector.save(out / f"{name}.safetensors")
        span = ALPHA_SPANS.get(name, max(abs(a) for a in preset.alpha_range))
        alphas = [float(a) for a in np.linspace(-span, span, points)]
        with tqdm(total=len(alphas), desc=f"{name}: alpha sweep", unit="alpha") as bar:
            def advance(_alpha: float) -> None:
                bar.update(1)

            sweep, clips = steering_sweep(handle, vector, prompt, alphas, metric=CONCEPT_METRIC.get(name),
                                          seeds=seeds, seconds=seconds, seed=seed, progress=advance)
        wavs = [write_wav(out / f"{name}_{a:+.1f}.wav", row[0], handle.sample_rate).name
                for a, row in zip(alphas, clips, strict=True)]
        ylabel = UNITS.get(sweep.metric, sweep.metric)
        metric_band(alphas, sweep.values, ylabel, out / f"{name}_{sweep.metric}_vs_alpha.png",
                    title=f"{name} ({preset.positive_label} +, {preset.negative_label} −): {seeds} seeds")
        spectrogram_grid([(f"{name} α={a:+.1f}", row[0]) for a, row in zip(alphas, clips, strict=True)],
                         handle.sample_rate, out / f"{name}_spectrograms.png", title=f"{name} sweep, first seed")
        measured[name] = {**sweep.to_json(), "vector": vector_path.name, "layers": list(vector.layers),
                                     "wavs": wavs}
        lines.append(sweep.summary())
        if name == "tempo":  # the same vector as a target knob, closed loop (bridge/live/target_loop.py)
            summary["tempo_target"] = step = target_run(handle, vector, prompt, out, seed=seed,
                                                          seconds=max(4.0, 2 * seconds))
            lines.append(f"tempo as a target knob: {SETPOINTS[0]:g} -> {SETPOINTS[1]:g} BPM, "
                         f"the loop's sensor reads {step['final_measured_bpm']} BPM at the end "
                         f"(alpha {step['alpha_end']:+.2f}; tempo_target_step.png)")
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsteerbridge demo on {model}: wrote WAVs, plots and demo.json to {out}/")
    for line in lines:
        print("  " + line)
    if model == "toy":
        print("  toy is a small MusicGen trained on synthetic music (drums, a lead, piano, bass): it shows")
        print("  what steering does, not MusicGen's sound. With real weights: --model facebook/musicgen-small.")
    return summary
