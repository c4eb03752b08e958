"""Issue 19 item 3: a probe target's step response and its 30 s hold, on the toy, live.

Each run is a real server in-process (the toy on the CPU, ``--audio-out none``: the silent
clock plays in real time), recorded, with the concept's shipped vector (it carries its
probe). The script drives ``/steer/<concept>/target/probe``: a low setpoint first, then a
step to a high one, held. Every 0.1 s it reads ``/status``'s loop state (the smoothed probe
reading the loop holds, the last raw reading, alpha). Two judges beside the loop's own
reading: librosa on the recording, second by second, independent of the probe (the
timbre probe's concept is brightness: the spectral centroid; the tempo probe's is pace:
onsets a second), and the same run with alpha held at 0
(the unsteered stream) for the underruns the loop may add. Writes ``probe_target.json`` and
``probe_step_response.png``.

    PYTHONPATH=$PWD python benchmarks/probe_target.py --out bench_probe --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import librosa
import numpy as np
import torch
from target_knobs import play  # benchmarks/target_knobs.py: the same live loop as the tempo targets
from tqdm import tqdm

from bridge.live import probe_loop
from bridge.live.commands import Origin
from bridge.live.serve import ServeOptions, Server
from steering_core.model.loading import load_model
from steering_core.toy.shipped_vectors import shipped_path

BENCH = Origin("benchmark")
#: When the low setpoint goes on, when it steps to the high one, how long the hold is judged.
LOW_AT_S, STEP_AT_S, HOLD_S = 2.0, 12.0, 30.0
#: The hold is judged from this long after the step (the settling is judged separately).
HOLD_FROM_S = 8.0
BAND = 0.1  # the bound on the held reading


def run(handle, concept: str, out: Path, name: str, seed: int, seconds: float, actions) -> dict:
    """Play ``seconds`` with ``actions`` [(t, callable(server))]; a 0.1 s trace of the loop and the recording."""
    o = ServeOptions(model="toy", osc_port=0, audio_out="none", status_line=False, record=str(out / f"{name}.wav"),
                     vectors=[str(shipped_path(concept))], seed=seed, cuda_graphs="off")
    server = Server(o, handle=handle)

    def sample(st: dict, t: float) -> dict:
        loop = st["target_knobs"].get(concept) or {}
        return {"t": round(t, 2), "alpha": st["alphas"].get(concept), "setpoint": loop.get("setpoint"),
                "measured": loop.get("measured"), "raw": loop.get("raw"), "probe": (st.get("probes") or {}).get(concept)}

    trace = play(server, seconds, actions, sample, every=0.1)
    return {"trace": trace, "underruns": server.status()["underruns"]}


def per_second(trace: list[dict], key: str, start: float, end: float) -> list[float]:
    """Each whole second's mean of ``key`` in [start, end)."""
    out = []
    for a in np.arange(start, end - 0.999, 1.0):
        vals = [r[key] for r in trace if a <= r["t"] < a + 1.0 and r[key] is not None]
        out.append(float(np.mean(vals)) if vals else math.nan)
    return out


def step_metrics(trace: list[dict], low: float, high: float) -> dict:
    """Settling (the first moment after the step from which every 1 s mean stays within
    BAND), overshoot past the setpoint as a part of the step, and the hold's worst 1 s mean."""
    end = trace[-1]["t"]
    means = per_second(trace, "measured", STEP_AT_S, end)
    inside = [abs(m - high) <= BAND for m in means]
    settle = next((float(i) for i in range(len(inside)) if all(inside[i:])), None)
    after = [r["measured"] for r in trace if r["t"] >= STEP_AT_S and r["measured"] is not None]
    peak = max(after, default=math.nan)
    hold = per_second(trace, "measured", STEP_AT_S + HOLD_FROM_S, STEP_AT_S + HOLD_FROM_S + HOLD_S)
    low_means = per_second(trace, "measured", STEP_AT_S - 4.0, STEP_AT_S)
    return {"settle_s": settle, "overshoot": max(0.0, (peak - high) / (high - low)),
            "hold_worst_abs_error": float(np.nanmax(np.abs(np.array(hold) - high))), "hold_seconds": len(hold),
            "low_mean_before_step": float(np.nanmean(low_means))}


#: The judge of each concept's probe, on the recording: (what it measures, unit, per-second values).
JUDGES = {"timbre": ("centroid", "Hz"), "tempo": ("onsets", "a second")}


def judged_per_second(path: Path, concept: str) -> list[float]:
    """The concept's own measure, second by second: the centroid, or librosa's onsets counted."""
    audio, rate = librosa.load(str(path), sr=None, mono=True)
    seconds = int(len(audio) / rate)
    if JUDGES.get(concept, JUDGES["timbre"])[0] == "onsets":
        onsets = librosa.onset.onset_detect(y=audio, sr=rate, units="time")
        return [float(np.sum((onsets >= i) & (onsets < i + 1))) for i in range(seconds)]
    cent = librosa.feature.spectral_centroid(y=audio, sr=rate, hop_length=512)[0]
    frames_per_s = rate / 512
    return [float(np.mean(cent[int(i * frames_per_s):int((i + 1) * frames_per_s)])) for i in range(seconds)]


def smooth(values: list[float], width: int = 3) -> list[float]:
    """A running median over ``width`` seconds: one second's measure jumps with each note."""
    half = width // 2
    return [float(np.median(values[max(0, i - half):i + half + 1])) for i in range(len(values))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_probe")
    p.add_argument("--concept", default="timbre")
    p.add_argument("--low", type=float, default=0.2)
    p.add_argument("--high", type=float, default=0.8)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--modes", default="target,plain", help="target: the probe loop; plain: alpha 0 throughout")
    # The loop's constants, for tuning runs (the defaults are bridge/live/probe_loop.py's).
    p.add_argument("--prior-slope", type=float, default=probe_loop.PROBE_PRIOR_SLOPE)
    p.add_argument("--smooth-s", type=float, default=probe_loop.PROBE_SMOOTH_S)
    p.add_argument("--ki", type=float, default=probe_loop.PROBE_KI)
    p.add_argument("--integral-clip", type=float, default=probe_loop.PROBE_INTEGRAL_CLIP,
                   help="the logit error the integral takes at most (inf: the whole error)")
    args = p.parse_args()
    probe_loop.PROBE_PRIOR_SLOPE, probe_loop.PROBE_SMOOTH_S, probe_loop.PROBE_KI = args.prior_slope, args.smooth_s, args.ki
    probe_loop.PROBE_INTEGRAL_CLIP = args.integral_clip
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model("toy", "cpu", "float32")
    seconds = STEP_AT_S + HOLD_FROM_S + HOLD_S + 1.0
    c, low, high = args.concept, args.low, args.high
    results: dict = {"concept": c, "low": low, "high": high, "step_at_s": STEP_AT_S, "hold_s": HOLD_S, "runs": {},
                     "loop": {"prior_slope": args.prior_slope, "smooth_s": args.smooth_s, "ki": args.ki,
                              "integral_clip": args.integral_clip}}
    jobs = [(seed, mode) for seed in map(int, args.seeds.split(",")) for mode in args.modes.split(",")]
    for seed, mode in tqdm(jobs, desc="runs", unit="run"):
        name = f"{mode}_seed{seed}"
        actions = []
        if mode == "target":
            actions = [(LOW_AT_S, lambda s: s.commands.run(f"/steer/{c}/target/probe", [low], BENCH)),
                       (STEP_AT_S, lambda s: s.commands.run(f"/steer/{c}/target/probe", [high], BENCH))]
        record = run(handle, c, out, name, seed, seconds, actions)
        record["judged"] = judged_per_second(out / f"{name}.wav", c)
        if mode == "target":
            record.update(step_metrics(record["trace"], low, high))
        results["runs"][name] = record
        print(name, {k: v for k, v in record.items() if k not in ("trace", "judged")}, flush=True)
    (out / "probe_target.json").write_text(json.dumps(results, indent=1))
    plot(results, out)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    c, high = results["concept"], results["high"]
    targets = [name for name in results["runs"] if name.startswith("target")]
    for i, name in enumerate(targets):
        run, colour, seed = results["runs"][name], f"C{i}", name.removeprefix("target_")
        tr = run["trace"]
        ts = [r["t"] for r in tr]
        axes[0].plot(ts, [r["measured"] for r in tr], colour, label=f"{seed}: the reading the loop holds")
        axes[1].plot(ts, [r["alpha"] for r in tr], colour, label=seed)
        axes[2].plot(np.arange(len(run["judged"])) + 0.5, smooth(run["judged"]), colour,
                     label=f"{seed}, probe target")
        plain = results["runs"].get(f"plain_{seed}")
        if plain:
            axes[2].plot(np.arange(len(plain["judged"])) + 0.5, smooth(plain["judged"]), colour,
                         linestyle=":", label=f"{seed}, alpha 0")
    if targets:
        tr = results["runs"][targets[0]]["trace"]
        axes[0].plot([r["t"] for r in tr], [r["setpoint"] for r in tr], "k--", label="setpoint")
    hold_from = results["step_at_s"] + HOLD_FROM_S
    axes[0].axhspan(high - BAND, high + BAND, xmin=0, xmax=1, color="grey", alpha=0.15)
    axes[0].axvspan(hold_from, hold_from + results["hold_s"], color="green", alpha=0.05, label="30 s hold judged")
    axes[0].set_ylabel(f"{c} probe (probability)")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("alpha played")
    what, unit = JUDGES.get(c, JUDGES["timbre"])
    axes[2].set_ylabel(f"{what} ({unit}, librosa, 3 s median)")
    axes[2].set_xlabel("s")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{c} probe target: {results['low']:g} -> {high:g} at {results['step_at_s']:g} s, then held")
    fig.tight_layout()
    fig.savefig(out / "probe_step_response.png", dpi=100)


if __name__ == "__main__":
    main()
