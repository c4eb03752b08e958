"""``steerbridge demo``: the whole pipeline on the built-in tiny model, no set-up.

Extract a timbre vector, render an alpha sweep with one seed, and write the WAVs, a
spectrogram grid and a centroid-versus-alpha plot. The tiny model has random weights,
so the audio is noise, not music; the demo shows the mechanics a real model uses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from steering_core.audio import spectral_centroid, write_wav
from steering_core.concepts import load_concept
from steering_core.extraction import extract_vector
from steering_core.models import load_model
from steering_core.render import render

from .plots import metric_curve, spectrogram_grid

log = logging.getLogger("steerbridge.demo")

SWEEP = (-6.0, -3.0, 0.0, 3.0, 6.0)


def run_demo(out: Path, seconds: float = 4.0, seed: int = 7, concept: str = "timbre") -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model("tiny")
    log.info("model: built-in tiny MusicGen (random weights: expect noise, not music), %d layers, d_model %d",
             handle.num_layers, handle.d_model)
    preset = load_concept(concept)
    vector = extract_vector(handle, preset, frames=25)
    vector_path = vector.save(out / f"{concept}.safetensors")
    log.info("extracted %r (%s vs %s) at layers %s -> %s", concept, preset.positive_label,
             preset.negative_label, list(vector.layers), vector_path)
    prompt = "an ambient synth piece"
    clips, rows = [], []
    for alpha in SWEEP:
        audio = render(handle, prompt, seconds, seed=seed, vectors=[vector], alphas={concept: alpha})
        path = write_wav(out / f"{concept}_{alpha:+.0f}.wav", audio, handle.sample_rate)
        centroid = spectral_centroid(audio, handle.sample_rate)
        clips.append((f"{concept} α={alpha:+g}", audio))
        rows.append({"alpha": alpha, "wav": path.name, "spectral_centroid_hz": round(centroid, 1)})
        log.info("rendered α=%+.1f -> %s (spectral centroid %.0f Hz)", alpha, path.name, centroid)
    spectrogram_grid(clips, handle.sample_rate, out / "spectrograms.png", title=f"{concept} sweep, seed {seed}")
    metric_curve([r["alpha"] for r in rows], [r["spectral_centroid_hz"] for r in rows], "alpha",
                 "spectral centroid (Hz)", out / "centroid_vs_alpha.png", title=f"{concept}: brightness vs alpha")
    summary = {"model": "tiny", "concept": concept, "prompt": prompt, "seed": seed, "seconds": seconds,
               "vector": vector_path.name, "sweep": rows}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsteerbridge demo: wrote to {out}/")
    print(f"  {vector_path.name}: {concept} steering vector ({vector.method}, layers {list(vector.layers)})")
    for r in rows:
        print(f"  {r['wav']}: alpha {r['alpha']:+g}, spectral centroid {r['spectral_centroid_hz']:.0f} Hz")
    print("  spectrograms.png, centroid_vs_alpha.png: the sweep, as pictures")
    print("  The tiny model has random weights, so this is steered noise; with --model facebook/musicgen-small")
    print("  the same commands steer music (steerbridge extract / render).")
    return summary
