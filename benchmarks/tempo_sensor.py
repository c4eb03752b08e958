"""Issue 19: the target loop's tempo sensor against the toy's ground truth (its drum codes).

Renders toy clips with the shipped calibrated tempo vector at alphas over (and past) its
calibrated range, then slides the sensor's window over each clip, as the live loop does
once a beat, and compares each reading with the drum codes' own tempo over the same window
(``toy/readback.py``: the exact hit frames, no onset detector). Reports, per sensor, the
share of windows it reads (not NaN) and the median and 90th percentile |error| where it
reads. Run it at two commits to compare two sensors. The clips are cached
(``--out``/clips.npz), so a second run renders nothing.

    PYTHONPATH=$PWD python benchmarks/tempo_sensor.py --out bench_sensor
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bridge.live.sensors import pulse_reading
from steering_core.toy import world
from steering_core.toy.readback import hit_frames

PROMPT = "an energetic electronic track with a steady beat"  # serve's default prompt
ALPHAS = (-2.0, -1.0, -0.5, 0.0, 0.5)
WINDOW_S, HOP_S = 3.0, 0.5


def render(seeds: int, seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio [n, samples], codes [n, K, frames] and alpha [n] of ``seeds`` clips per alpha."""
    import torch

    from steering_core.codec.streaming import decode
    from steering_core.model.loading import load_model
    from steering_core.steer.steerer import Steerer
    from steering_core.stream.decode_loop import MusicStream
    from steering_core.toy.shipped_vectors import shipped_default

    torch.set_num_threads(1)
    handle = load_model("toy", "cpu", "float32")
    vector = shipped_default(handle, "tempo")
    if vector is None:
        raise SystemExit("the shipped toy tempo vector does not match this toy")
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    audio, codes, alphas = [], [], []
    for alpha in ALPHAS:
        steerer.set_alpha("tempo", alpha)
        stream = MusicStream(handle, [PROMPT] * seeds, seed=int(alpha * 10) + 100, steerer=steerer)
        with stream.steering():
            c = stream.generate_frames(round(seconds * handle.frame_rate))
        for i in range(seeds):
            audio.append(decode(handle, c[i:i + 1])[0].reshape(-1))
            codes.append(c[i].cpu().numpy())
            alphas.append(alpha)
    return np.stack(audio), np.stack(codes), np.array(alphas)


def truth_bpm(drums: np.ndarray, start_s: float, end_s: float) -> float:
    """The drums' tempo over a window: 30 / mean gap between its first and last hit (NaN: < 3 hits)."""
    hits = hit_frames(drums)
    hits = hits[(hits >= start_s * world.FRAME_RATE) & (hits < end_s * world.FRAME_RATE)]
    if hits.size < 3:
        return math.nan
    return 30.0 * world.FRAME_RATE / ((hits[-1] - hits[0]) / (hits.size - 1))


Sensor = Callable[[np.ndarray, int, float], float]


def evaluate(audio: np.ndarray, codes: np.ndarray, rate: int, sensor: Sensor, reference: str) -> dict[str, float]:
    """Slide a window over every clip; the reference tempo the loop would hand the sensor is
    the truth itself ("truth"), the truth 15 % off ("off"), or a fixed 120 BPM ("fixed")."""
    errors, windows, read = [], 0, 0
    for clip, code in zip(audio, codes, strict=True):
        seconds = len(clip) / rate
        for a in np.arange(0.0, seconds - WINDOW_S + 1e-9, HOP_S):
            truth = truth_bpm(code[world.DRUMS], a, a + WINDOW_S)
            if not math.isfinite(truth):
                continue
            ref = {"truth": truth, "off": truth * (1.15 if windows % 2 else 0.85), "fixed": 120.0}[reference]
            windows += 1
            bpm = sensor(clip[int(a * rate):int((a + WINDOW_S) * rate)], rate, ref)
            if math.isfinite(bpm):
                read += 1
                errors.append(abs(bpm / truth - 1))
    e = np.array(errors)
    return {"windows": windows, "read_rate": read / max(windows, 1),
            "median_error": float(np.median(e)) if e.size else math.nan,
            "p90_error": float(np.percentile(e, 90)) if e.size else math.nan,
            "within_5pct": float((e <= 0.05).mean()) if e.size else math.nan}


#: The loop's sensor as this checkout has it (run the script at two commits to compare them).
SENSORS: dict[str, Sensor] = {"pulse_reading": lambda x, r, ref: pulse_reading(x, r, ref).bpm}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_sensor")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "clips.npz"
    if cache.is_file():
        data = np.load(cache)
        audio, codes, alphas = data["audio"], data["codes"], data["alphas"]
    else:
        audio, codes, alphas = render(args.seeds, args.seconds)
        np.savez_compressed(cache, audio=audio, codes=codes, alphas=alphas)
    rate = world.SAMPLE_RATE
    whole = [truth_bpm(c[world.DRUMS], 0, 1e9) for c in codes]
    print(f"{len(audio)} clips at alphas {sorted(set(alphas.tolist()))}; drum tempo per clip "
          f"{np.round(whole, 1).tolist()}")
    results = {}
    for name, sensor in SENSORS.items():
        for reference in ("truth", "off", "fixed"):
            r = evaluate(audio, codes, rate, sensor, reference)
            results[f"{name}, reference {reference}"] = r
            print(f"{name:22s} ref {reference:5s}: read {r['read_rate']:.0%} of {r['windows']}, median "
                  f"{r['median_error']:.1%}, p90 {r['p90_error']:.1%}, within 5 % {r['within_5pct']:.0%}", flush=True)
    (out / "tempo_sensor.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
