"""Issue 19 item 4: how steadily the toy can play a tempo at all, whatever the controller does.

The tempo lock is judged per 3 s window of the drums played (``target_knobs.truth_lock``:
median |window tempo / host tempo - 1| ≤ 3 %, and each hit within 40 ms of the host's
eighth-note grid). This measures the floor under that judge from the drum codes alone, with
no controller, no sensor and no audio in the way (``toy/readback.py``):

* **the world** (the training data, ``toy/world.py``): clips scored at the host's tempo.
  Its drummer plays each eighth as a whole number of frames, give or take one, so a
  perfectly trained toy still misses a tempo whose eighth is not a whole number of frames,
  and its phase wanders a frame at a time;
* **the trained toy** at fixed alphas of the shipped tempo vector on ``serve``'s prompt,
  several seeds: each clip's own median tempo, how far its windows wander around it, and
  for each host tempo the best any constant alpha does (the clip whose median is nearest).

    PYTHONPATH=$PWD python benchmarks/toy_tempo_floor.py --out bench_floor

Writes ``toy_tempo_floor.json`` and ``toy_tempo_floor.png``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bridge.live.options import DEFAULT_PROMPT
from steering_core.model.loading import load_model
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import load_vector
from steering_core.stream.decode_loop import MusicStream
from steering_core.toy import world
from steering_core.toy.readback import drum_bpm, hit_frames
from steering_core.toy.shipped_vectors import shipped_path

HOSTS = (90.0, 120.0, 150.0)
WINDOW_S, HOP_S = 3.0, 0.5  # as target_knobs.truth_track
SKIP_S = 2.0  # a stream's first seconds are its count-in


def windows(drums: np.ndarray) -> list[tuple[float, float]]:
    """(centre s, BPM) per window of codebook 0, as ``target_knobs.truth_track`` reads them."""
    n, hop, skip = int(WINDOW_S * world.FRAME_RATE), int(HOP_S * world.FRAME_RATE), int(SKIP_S * world.FRAME_RATE)
    out = []
    for a in range(skip, drums.size - n + 1, hop):
        bpm = drum_bpm(drums[a:a + n])
        if bpm > 0:
            out.append(((a + n / 2) / world.FRAME_RATE, bpm))
    return out


def phase_ms(drums: np.ndarray, bpm: float) -> float:
    """Median |offset| (ms) of the hits from a grid of eighths at ``bpm`` whose phase is the
    hits' own circular mean: the best any fixed grid at that tempo does."""
    hits = hit_frames(drums)
    hits = hits[hits >= SKIP_S * world.FRAME_RATE] / world.FRAME_RATE
    if hits.size < 3:
        return float("nan")
    eighth = 30.0 / bpm
    angle = np.angle(np.mean(np.exp(2j * np.pi * hits / eighth)))
    offsets = (hits / eighth - angle / (2 * np.pi) + 0.5) % 1.0 - 0.5
    return float(np.median(np.abs(offsets)) * eighth * 1000)


def clip_stats(drums: np.ndarray, host: float | None = None) -> dict:
    track = windows(drums)
    bpms = np.array([b for _, b in track])
    gaps = np.diff(hit_frames(drums))
    own = float(np.median(bpms)) if bpms.size else float("nan")
    out = {"median_bpm": round(own, 2), "wander": round(float(np.median(np.abs(bpms / own - 1))), 4),
           "gap_cv": round(float(np.std(gaps) / np.mean(gaps)), 3) if gaps.size > 1 else None,
           "own_phase_ms": round(phase_ms(drums, own), 1)}
    if host is not None:
        out["host_error"] = round(float(np.median(np.abs(bpms / host - 1))), 4)
        out["host_phase_ms"] = round(phase_ms(drums, host), 1)
    return out


def the_world(clips: int, seconds: float) -> dict:
    rng = random.Random(19)
    out = {}
    for host in HOSTS:
        rows = []
        for _ in range(clips):
            p = world.Params(bpm=host, brightness=3, major=True, piano=True, bass=True)
            rows.append(clip_stats(world.score(p, int(seconds * world.FRAME_RATE), rng)[world.DRUMS], host))
        out[f"{host:g}"] = {"clips": rows, **{k: float(np.median([r[k] for r in rows]))
                                               for k in ("median_bpm", "wander", "gap_cv", "host_error", "host_phase_ms")}}
    return out


def the_model(alphas: list[float], seeds: int, seconds: float) -> tuple[dict, dict]:
    handle = load_model("toy", "cpu", "float32")
    vector = load_vector(shipped_path("tempo"))
    out, drums = {}, {}
    for alpha in tqdm(alphas, desc="alphas", unit="alpha"):
        steerer = Steerer(handle)
        steerer.add(vector, alpha=alpha)
        stream = MusicStream(handle, [DEFAULT_PROMPT] * seeds, seed=0, steerer=steerer)
        with stream.steering():
            codes = stream.generate_frames(int(seconds * world.FRAME_RATE)).cpu().numpy()
        # The calibration measures a sweep on each clip's first seconds: beside the stream's own
        # median, what those seconds play.
        rows = [{**clip_stats(c[world.DRUMS]), "first_3s_bpm": round(drum_bpm(c[world.DRUMS, :150]), 2)}
                for c in codes]
        drums[alpha] = codes[:, world.DRUMS]
        out[f"{alpha:g}"] = {"clips": rows, "wander": float(np.median([r["wander"] for r in rows])),
                             "gap_cv": float(np.median([r["gap_cv"] for r in rows])),
                             "median_bpm": float(np.median([r["median_bpm"] for r in rows])),
                             "first_3s_bpm": float(np.median([r["first_3s_bpm"] for r in rows]))}
    best = {}
    for host in HOSTS:  # per seed, the constant alpha whose clip plays nearest the host
        per_seed = []
        for s in range(seeds):
            alpha = min(alphas, key=lambda a: abs(out[f"{a:g}"]["clips"][s]["median_bpm"] / host - 1))
            per_seed.append({"seed": s, "alpha": alpha, **clip_stats(drums[alpha][s], host)})
        best[f"{host:g}"] = {"per_seed": per_seed,
                             "host_error": float(np.median([r["host_error"] for r in per_seed])),
                             "host_phase_ms": float(np.median([r["host_phase_ms"] for r in per_seed]))}
    return out, {"best_constant_alpha": best, "drums": drums}


def plot(results: dict, drums: dict, worlds: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for host in HOSTS:
        ax.axhspan(host * 0.97, host * 1.03, color="0.85")
    for host, codes in worlds.items():
        track = windows(codes)
        ax.plot([t for t, _ in track], [b for _, b in track], "k-", lw=1,
                label="the world (training data) at 90/120/150" if host == HOSTS[0] else None)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (alpha, rows) in enumerate(drums.items()):
        for s in range(min(2, len(rows))):
            track = windows(rows[s])
            ax.plot([t for t, _ in track], [b for _, b in track], color=colours[i % len(colours)], lw=1,
                    ls="-" if s == 0 else "--", label=f"toy, alpha {alpha:+g}" if s == 0 else None)
    ax.set_xlabel("s")
    ax.set_ylabel("drums' tempo per 3 s window (BPM, from the codes)")
    ax.set_title("How steadily the toy plays a tempo at a fixed alpha (grey: host ±3 %)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "toy_tempo_floor.png", dpi=100)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_floor")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--alphas", default="-2,-1,-0.5,0,0.25,0.5", help="the shipped tempo vector's alphas")
    p.add_argument("--world-clips", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worlds = the_world(args.world_clips, args.seconds)
    model, extra = the_model([float(a) for a in args.alphas.split(",")], args.seeds, args.seconds)
    results = {"prompt": DEFAULT_PROMPT, "seconds": args.seconds, "window_s": WINDOW_S, "world": worlds,
               "toy": model, "best_constant_alpha": extra["best_constant_alpha"]}
    (out / "toy_tempo_floor.json").write_text(json.dumps(results, indent=1))
    rng = random.Random(7)
    one_world = {h: world.score(world.Params(h, 3, True, True, True), int(args.seconds * world.FRAME_RATE), rng)[0]
                 for h in HOSTS}
    plot(results, extra["drums"], one_world, out)
    for host, w in worlds.items():
        best = results["best_constant_alpha"][host]
        print(f"host {host} BPM: world plays {w['median_bpm']:.1f} (window error {w['host_error']:.1%}, "
              f"phase {w['host_phase_ms']:.0f} ms, gap CV {w['gap_cv']:.3f}); toy at its best constant alpha: "
              f"window error {best['host_error']:.1%}, phase {best['host_phase_ms']:.0f} ms "
              f"(alphas {[r['alpha'] for r in best['per_seed']]})")
    for alpha, m in model.items():
        print(f"toy alpha {alpha}: clip medians {[r['median_bpm'] for r in m['clips']]} BPM (median "
              f"{m['median_bpm']:.1f}; the first 3 s: {m['first_3s_bpm']:.1f}), windows wander {m['wander']:.1%} "
              f"around them, gap CV {m['gap_cv']:.3f}")


if __name__ == "__main__":
    main()
