"""Issue 19, items 1-2 on the toy: calibrated default knobs, judged by librosa, and the
selective tempo vector.

    python benchmarks/calibration.py [--write-shipped] [--out benchmarks/figures/calibration]
    python benchmarks/calibration.py --add-probes  # the shipped defaults' probes, nothing else

``--add-probes`` fits each shipped default's probe on its own activations, collected again
(``calibrated_extract.with_probe`` checks they give the shipped directions) and writes it
into the shipped file, every other field as it was.

1. ``calibrated_vector`` for tempo and timbre, as ``serve`` makes its defaults (serve's
   prompt; layer choice over the preset's span; 4 seeds x 3 s per alpha). With
   ``--write-shipped`` they become the toy's shipped defaults (steering_core/toy/vectors/).
2. ``selective`` for tempo against timbre, on tempo's layers.
3. Judged by librosa (an onset detector and centroid that none of the calibration used):
   each knob at 7 points over its whole 0..1, 5 seeds x 4 s, on serve's prompt:
   Spearman of the own measure, the others' largest change from alpha 0; and, for the
   selective tempo vector against the plain one, the centroid's and onset rate's change
   end to end.
Plots (calibration curves, the cross-effect matrix before and after) go to --out; one
JSON object is printed. Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch


def librosa_measures(audio: np.ndarray, sr: int) -> dict[str, float]:
    import librosa

    y = np.atleast_2d(audio).mean(axis=0).astype(np.float32)
    onsets = librosa.onset.onset_detect(y=y, sr=sr, units="time")
    return {"onset_rate": float(len(onsets) / (len(y) / sr)),
            "centroid_hz": float(librosa.feature.spectral_centroid(y=y, sr=sr).mean()),
            "rms": float(librosa.feature.rms(y=y).mean())}


def judge(handle, vector, prompt: str, points: int, seeds: int, seconds: float) -> dict[str, object]:
    from scipy.stats import spearmanr

    from steering_core.codec.streaming import decode
    from steering_core.evaluate.calibration import OWN_MEASURE
    from steering_core.steer.steerer import Steerer
    from steering_core.stream.decode_loop import MusicStream

    lo, hi = vector.alpha_range
    alphas = [float(a) for a in np.linspace(lo, hi, points)]
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    rows = {}
    for alpha in [*alphas, 0.0]:
        steerer.set_alpha(vector.concept, alpha)
        stream = MusicStream(handle, [prompt] * seeds, seed=0, steerer=steerer)
        with stream.steering():
            codes = stream.generate_frames(round(seconds * handle.frame_rate))
        clips = [decode(handle, codes[i:i + 1])[0] for i in range(seeds)]
        ms = [librosa_measures(a, handle.sample_rate) for a in clips]
        rows[alpha] = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
    own = OWN_MEASURE[vector.concept]
    mean_own = [rows[a][own] for a in alphas]
    zero = rows[0.0]
    others = {k: round(max(abs(rows[a][k] / zero[k] - 1) for a in alphas), 4) for k in zero if k != own}
    return {"alphas": alphas, "alpha_range": [lo, hi], "layers": list(vector.layers), "own": own,
            "spearman": round(float(spearmanr(alphas, mean_own).statistic), 4),
            "means": {k: [round(rows[a][k], 4) for a in alphas] for k in zero},
            "at_alpha_0": {k: round(v, 4) for k, v in zero.items()}, "others_max_change": others,
            "end_to_end": {k: round(rows[alphas[-1]][k] - rows[alphas[0]][k], 4) for k in zero}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-shipped", action="store_true")
    p.add_argument("--add-probes", action="store_true", help="add the probe to each shipped default, nothing else")
    p.add_argument("--out", default="benchmarks/figures/calibration")
    p.add_argument("--seeds", type=int, default=4, help="calibration seeds per alpha")
    p.add_argument("--judge-seeds", type=int, default=5)
    p.add_argument("--judge-points", type=int, default=7)
    p.add_argument("--only", default=None, choices=("tempo", "timbre"),
                   help="calibrate and judge this one concept (no selectivity step)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from bridge.live.options import DEFAULT_PROMPT
    from bridge.tools.plots import calibration_curves, effect_matrix
    from steering_core.evaluate.calibrated_extract import calibrated_vector
    from steering_core.evaluate.selectivity import cross_effects, selective
    from steering_core.extract.concepts import load_concept
    from steering_core.extract.extraction import extract_vector
    from steering_core.model.loading import load_model
    from steering_core.toy.shipped_vectors import shipped_path

    if args.add_probes:
        from steering_core.evaluate.calibrated_extract import with_probe
        from steering_core.steer.vectors import load_vector

        toy = load_model("toy", device="cpu")
        for name in ("tempo", "timbre"):
            vector = with_probe(toy, load_concept(name), load_vector(shipped_path(name)))
            assert vector.probe is not None
            vector.save(shipped_path(name))
            print(name, "probe on layer", vector.probe.layer, json.dumps(dict(vector.probe.info)), flush=True)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    handle = load_model("toy", device="cpu")
    load = os.getloadavg()
    result: dict[str, object] = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": load,
                                 "prompt": DEFAULT_PROMPT, "calibration_seeds": args.seeds}
    vectors, cals = {}, {}
    for name in (args.only,) if args.only else ("tempo", "timbre"):
        t = time.time()
        vector, cal, every = calibrated_vector(handle, load_concept(name), prompt=DEFAULT_PROMPT, seeds=args.seeds)
        vectors[name], cals[name] = vector, cal
        calibration_curves(cal.table, cal.alpha_range, cal.own, out / f"calibration_{name}.png",
                           title=f"toy {name}, layers {list(cal.layers)}: measures vs alpha (shaded: calibrated)")
        result[f"{name}_calibration"] = {"line": cal.line(), "seconds": round(time.time() - t, 1),
                                         "candidates": [c.line() for c in every]}
        print(cal.line(), flush=True)
        if args.write_shipped:
            vector.save(shipped_path(name))
    if args.only:
        result["librosa"] = {args.only: judge(handle, vectors[args.only], DEFAULT_PROMPT, args.judge_points,
                                              args.judge_seeds, 4.0)}
        result["seconds_taken"] = round(time.time() - started, 1)
        (out / f"calibration_{args.only}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0
    t = time.time()
    timbre_here = extract_vector(handle, load_concept("timbre"), layers=vectors["tempo"].layers, progress=False)
    import dataclasses

    plain_tempo = dataclasses.replace(vectors["tempo"], calibration=None)
    chosen = selective(handle, plain_tempo, [timbre_here], prompt=DEFAULT_PROMPT, seeds=args.seeds, seconds=3.0)
    result["selective_tempo"] = {"chosen": chosen.chosen, "candidates": chosen.candidates,
                                 "seconds": round(time.time() - t, 1)}
    chosen.vector.save(out / "tempo_selective.safetensors")
    before = cross_effects([cals["tempo"], cals["timbre"]])
    after = {**before, "tempo": chosen.candidates[chosen.chosen]["effects"]}
    effect_matrix(before, after, out / "cross_effects.png")
    result["cross_effects"] = {"before": before, "after": after}
    print("selective tempo:", chosen.chosen, flush=True)
    judged = {}
    for label, v in (("tempo", vectors["tempo"]), ("timbre", vectors["timbre"]), ("tempo_selective", chosen.vector)):
        judged[label] = judge(handle, v, DEFAULT_PROMPT, args.judge_points, args.judge_seeds, 4.0)
        print(label, json.dumps(judged[label]), flush=True)
    result["librosa"] = judged
    plain, sel = judged["tempo"]["end_to_end"], judged["tempo_selective"]["end_to_end"]
    result["selectivity_librosa"] = {
        "centroid_effect_ratio": round(abs(sel["centroid_hz"]) / max(abs(plain["centroid_hz"]), 1e-9), 4),
        "onset_effect_kept": round(sel["onset_rate"] / plain["onset_rate"], 4) if plain["onset_rate"] else None}
    result["seconds_taken"] = round(time.time() - started, 1)
    result["load_after"] = os.getloadavg()
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
