"""Issue 19 items 3-4: a tempo target's step response and the tempo lock, on the toy, live.

Each run is a real server in-process (the toy on the CPU, ``--audio-out none``: the silent
clock plays in real time), recorded; the recording is judged by librosa's onset detection,
independent of the controller's own sensor: the local tempo per bar (the median interval
between onsets, as eighths) and each onset's offset from the clock's nearest eighth-note
grid line (the toy plays eighths). Beside it, the ground truth: the drum codes of every
frame played (``toy/readback.py``: the hits' times, hence the tempo and each hit's phase,
with no onset detector in the way). Writes ``target_knobs.json`` and step-response plots.

    PYTHONPATH=$PWD python benchmarks/target_knobs.py --out bench_targets
    PYTHONPATH=$PWD python benchmarks/target_knobs.py --vector shipped --runs step,lock90_on,lock90_off,lock120_on,lock120_off

``--warp`` turns the beat warp on with the lock (``/sync/lock/warp 1``): the lock runs then
judge what the warp placed (the drum codes' times are not what played, so no "truth" for
them). ``judge_fine`` is the finer librosa judge (4 ms onsets, the tempogram's tempo); the
grid a run is judged by holds every tempo segment the clock had (a grid keeps its last 16).

``--vector shipped`` steers with the toy's shipped calibrated tempo vector (its calibration
sets the target knob's span and the loop's feed-forward); ``--vector layer`` (the default,
the first run's protocol) extracts one on ``--layer`` as ``steerbridge demo`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from tqdm import tqdm

from bridge.clock.grid import Grid
from bridge.live.commands import Origin
from bridge.live.control import ConceptKnob
from bridge.live.serve import ServeOptions, Server
from bridge.live.target_units import UNITS
from steering_core.extract.concepts import load_concept
from steering_core.extract.extraction import extract_vector
from steering_core.model.loading import load_model
from steering_core.steer.vectors import load_vector
from steering_core.toy import world
from steering_core.toy.readback import drum_bpm, hit_frames
from steering_core.toy.shipped_vectors import shipped_path

BENCH = Origin("benchmark")


def run(handle, vectors: list[str], out: Path, name: str, bpm: float, seconds: float, actions, seed: int = 0):
    """Play ``seconds`` with ``actions`` [(t, callable(server))]; the recording, the grid (the clock's,
    or a warped tempo target's own) and a status trace."""
    o = ServeOptions(model="toy", osc_port=0, audio_out="none", status_line=False, record=str(out / f"{name}.wav"),
                     bpm=bpm, vectors=vectors, seed=seed)
    server = Server(o, handle=handle)
    played = capture_played_codes(server)
    segments: dict = {}  # every segment the clock's grid had: a grid keeps only its last few (Grid.KEEP)

    def sample(st: dict, t: float) -> dict:
        grid = server.clock.snapshot.grid
        if grid is not None:
            segments.update({seg.sample: seg for seg in grid.segments})
        return {"t": round(t, 2), "alpha": st["alphas"].get("tempo"), "lock": st["lock"],
                "loop": st["target_knobs"].get("tempo"), "bpm": float(server.clock.snapshot.bpm),
                "underruns": st["underruns"], "warp": st.get("warp")}

    trace = play(server, seconds, actions, sample, every=0.25)
    target_grid = server.engine.targets.stage.target_grid  # a warped tempo target's own grid, if any
    trace[-1]["control_latency_ms"] = server.status()["control_latency_ms"]  # the loop's own alpha changes too
    last = server.clock.snapshot.grid
    segments.update({seg.sample: seg for seg in last.segments})
    grid = Grid(last.rate, tuple(segments[k] for k in sorted(segments)))  # the whole run's, to judge it by
    audio, rate = librosa.load(str(out / f"{name}.wav"), sr=None, mono=True)
    codes = np.concatenate(played, axis=1) if played else np.zeros((4, 0), np.int64)
    return audio, rate, target_grid or grid, trace, server.status()["underruns"], codes


def play(server: Server, seconds: float, actions, sample, every: float) -> list[dict]:
    """Start ``server``, run ``actions`` [(t, callable(server))] at their times and
    ``sample(status, t)`` every ``every`` seconds for ``seconds``, stop it; the samples."""
    trace = []
    server.start()
    t0 = time.monotonic()
    pending = sorted(actions, key=lambda a: a[0])
    try:
        while (t := time.monotonic() - t0) < seconds:
            while pending and pending[0][0] <= t:
                pending.pop(0)[1](server)
            trace.append(sample(server.status(), t))
            time.sleep(every)
    finally:
        server.stop()
    return trace


def capture_played_codes(server: Server) -> list[np.ndarray]:
    """The codes of every frame the decoder emits, in order (aligned [K, n] per chunk): what
    was played, rollbacks already resolved. The toy's ground truth is read from them."""
    decoder, played = server.engine.decoder, []
    pull = decoder.pull

    def pulled(final: bool = False) -> np.ndarray:
        first, base, codes = decoder.emitted_frames, decoder.base, decoder.codes
        audio = pull(final)
        if codes is not None and decoder.emitted_frames > first:
            played.append(codes[0, :, first - base:decoder.emitted_frames - base].cpu().numpy().copy())
        return audio

    decoder.pull = pulled  # type: ignore[method-assign]
    return played


def truth_track(codes: np.ndarray, window_s: float = 3.0, hop_s: float = 0.5) -> list[tuple[float, float]]:
    """(centre s, BPM) per window from the drum codes (toy/readback.py): the ground truth."""
    n, hop = int(window_s * world.FRAME_RATE), int(hop_s * world.FRAME_RATE)
    out = []
    for a in range(0, codes.shape[1] - n + 1, hop):
        bpm = drum_bpm(codes[world.DRUMS, a:a + n])
        if bpm > 0:
            out.append(((a + n / 2) / world.FRAME_RATE, bpm))
    return out


def truth_lock(codes: np.ndarray, rate: int, grid, start_s: float) -> dict:
    """The drum codes against the clock from ``start_s``: median |tempo error| per window
    and median |phase error| (s) of each hit against the grid's nearest eighth."""
    errors = [b / float(grid.segment_at(int(t * rate)).bpm) - 1 for t, b in truth_track(codes) if t >= start_s]
    phase = []
    for f in hit_frames(codes[world.DRUMS]):
        if f / world.FRAME_RATE < start_s:
            continue
        sample = int(f * rate / world.FRAME_RATE)
        eighth = float(grid.beat_at(sample)) * 2
        phase.append((eighth - round(eighth)) * 30.0 / float(grid.segment_at(sample).bpm))
    return {"truth_median_abs_tempo_error": float(np.median(np.abs(errors))) if errors else None,
            "truth_median_abs_phase_ms": float(np.median(np.abs(phase)) * 1000) if phase else None,
            "truth_hits": len(phase)}


def truth_step(codes: np.ndarray, at_s: float, to: float) -> dict:
    """The step judged by the drum codes played (``step_metrics``' keys, prefixed ``truth_``)."""
    track = truth_track(codes)
    out = settling(track, at_s, to)
    return {"truth_before_bpm": out["before"], "truth_final_bpm": out["final"], "truth_settle_s": out["settle_s"],
            "truth_overshoot": out["overshoot"], "truth_track": [(round(t, 2), round(b, 1)) for t, b in track]}


def settling(track: list[tuple[float, float]], at_s: float, to: float) -> dict:
    """A BPM track [(s, BPM)] after a step to ``to`` at ``at_s``: the median of the 4 s before,
    of the last 6 windows, when it came within 5 % for good (s after the step), overshoot."""
    before = [b for t, b in track if at_s - 4 <= t < at_s]
    after = [(t, b) for t, b in track if t >= at_s]
    start = float(np.median(before)) if before else float("nan")
    within = [abs(b / to - 1) <= 0.05 for _, b in after]
    settle = next((after[i][0] - at_s for i in range(len(after)) if all(within[i:])), None)
    peak = max((b for _, b in after), default=float("nan"))
    return {"before": start, "final": float(np.median([b for _, b in after[-6:]])) if after else None,
            "settle_s": settle, "overshoot": (peak - to) / (to - start) if peak > to else 0.0}


#: The fine judge's onset envelope hop: 4 ms at 32 kHz. librosa's default (512, 16 ms) makes a
#: median interval between onsets a whole number of 16 ms hops: at 120-150 BPM a perfectly
#: steady eighth reads 2.4-4.2 % off.
FINE_HOP = 128


def judge_fine(audio: np.ndarray, rate: int, grid, start_s: float, end_s: float | None = None) -> dict:
    """librosa, finer and sturdier: onsets on a 4 ms envelope, each one's offset from the grid's
    nearest eighth; the tempo per 3 s window (every 1 s) from librosa's tempogram
    (``librosa.feature.tempo``, with a flat prior over 40-300 BPM so that no tempo is favoured),
    against the host's tempo within an octave (a tempogram may pick the eighth, the beat or
    the half bar). A median interval between onsets, the first judge's, counts a note that
    changes between two drum hits as an eighth; the tempogram weighs the whole pulse."""
    import scipy.stats
    env = librosa.onset.onset_strength(y=audio, sr=rate, hop_length=FINE_HOP)
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=rate, hop_length=FINE_HOP, units="samples")
    end = end_s if end_s is not None else len(audio) / rate
    phase, offsets = [], []
    for sample in onsets:
        eighth = float(grid.beat_at(int(sample))) * 2
        off = (eighth - round(eighth)) * 30.0 / float(grid.segment_at(int(sample)).bpm)
        offsets.append((round(sample / rate, 3), round(off * 1000, 1)))
        if start_s <= sample / rate <= end:
            phase.append(off)
    errors, prior = [], scipy.stats.uniform(40.0, 260.0)
    frames_per_s = rate / FINE_HOP
    for a in np.arange(start_s, end - 3.0 + 1e-9, 1.0):
        window = env[int(a * frames_per_s):int((a + 3.0) * frames_per_s)]
        tempo = float(librosa.feature.tempo(onset_envelope=window, sr=rate, hop_length=FINE_HOP, ac_size=3.0,
                                            prior=prior)[0])
        host = float(grid.segment_at(int((a + 1.5) * rate)).bpm)
        errors.append(min(abs(tempo * k / host - 1) for k in (0.25, 0.5, 1.0, 2.0, 4.0)))
    return {"fine_median_abs_tempo_error": float(np.median(errors)) if errors else None,
            "fine_median_abs_phase_ms": float(np.median(np.abs(phase)) * 1000) if phase else None,
            "fine_onsets": len(phase), "fine_offsets_ms": offsets}


def judge(audio: np.ndarray, rate: int, grid, start_s: float, end_s: float | None = None):
    """librosa onsets -> per-bar tempo (BPM, from eighths) and phase errors (s) vs the grid's eighths."""
    onsets = librosa.onset.onset_detect(y=audio, sr=rate, units="samples", backtrack=False)
    t = onsets / rate
    keep = (t >= start_s) & (t <= (end_s if end_s is not None else t.max() + 1))
    onsets, t = onsets[keep], t[keep]
    phase = []
    tempo_err = []
    for sample in onsets:
        beat = float(grid.beat_at(int(sample)))
        eighth = beat * 2
        off = eighth - round(eighth)  # in eighths
        host_bpm = float(grid.segment_at(int(sample)).bpm)
        phase.append(off * 30.0 / host_bpm)
    # local tempo: per 3 s window, median IOI -> BPM (eighths)
    for a in np.arange(start_s, (end_s or t.max()) - 2.0, 1.0):
        w = t[(t >= a) & (t < a + 3.0)]
        if len(w) >= 3:
            ioi = np.median(np.diff(w))
            host = float(grid.segment_at(int((a + 1.5) * rate)).bpm)
            tempo_err.append(30.0 / ioi / host - 1)
    return np.array(tempo_err), np.array(phase), t


STEP_AT_S = 10.0  # the step goes from the knob's 0 to its 1 (the vector's calibrated span)


def local_tempo(audio: np.ndarray, rate: int, window_s: float = 2.0, hop_s: float = 0.5):
    """(centre s, BPM as eighths) per window of librosa's onsets: the judge's tempo track."""
    t = librosa.onset.onset_detect(y=audio, sr=rate, units="time")
    out = []
    for a in np.arange(0.0, len(audio) / rate - window_s, hop_s):
        w = t[(t >= a) & (t < a + window_s)]
        if len(w) >= 3:
            out.append((a + window_s / 2, 30.0 / float(np.median(np.diff(w)))))
    return out


def step_metrics(audio: np.ndarray, rate: int, at_s: float, to: float) -> dict:
    """The step judged by librosa's onsets of the recording."""
    track = local_tempo(audio, rate)
    out = settling(track, at_s, to)
    return {"judged_before_bpm": out["before"], "judged_final_bpm": out["final"], "settle_s": out["settle_s"],
            "overshoot": out["overshoot"], "judged_track": [(round(t, 2), round(b, 1)) for t, b in track if t >= at_s]}


def step_fine(audio: np.ndarray, rate: int, grid, at_s: float, start: float, to: float) -> dict:
    """A warped step judged by librosa on the recording, finer: the tempogram's tempo per 3 s
    window every 0.5 s (``judge_fine``'s), within an octave of the setpoint it is judged
    against (``start`` for windows that end before the step, ``to`` for those that begin
    after it; none that holds the step is judged: it hears both tempos). Settled: the end of
    the first window after the step from which every window is within 5 % of ``to`` (seconds
    after the step: what a listener has heard by then). Overshoot: the highest window past
    ``to``, as a part of the step, of the windows that begin once the new tempo is heard (the
    grid's tempo change; a window between the ask and it still holds the old tempo's last
    beats, and a tempogram of both tempos reads neither: it is reported apart, as
    ``fine_transition``). And each 4 ms onset's offset from the nearest eighth of the grid the
    warp placed them on (the target's own), from 1 s after the step."""
    import scipy.stats
    env = librosa.onset.onset_strength(y=audio, sr=rate, hop_length=FINE_HOP)
    frames_per_s, prior, track = rate / FINE_HOP, scipy.stats.uniform(40.0, 260.0), []
    for a in np.arange(0.0, len(audio) / rate - 3.0 + 1e-9, 0.5):
        if a < at_s < a + 3.0:
            continue
        window = env[int(a * frames_per_s):int((a + 3.0) * frames_per_s)]
        tempo = float(librosa.feature.tempo(onset_envelope=window, sr=rate, hop_length=FINE_HOP, ac_size=3.0,
                                            prior=prior)[0])
        aim = to if a >= at_s else start
        track.append((float(a), min((tempo * k for k in (0.25, 0.5, 1.0, 2.0, 4.0)), key=lambda b: abs(b / aim - 1))))
    before = [b for a, b in track if a + 3.0 <= at_s]
    after = [(a, b) for a, b in track if a >= at_s]
    within = [abs(b / to - 1) <= 0.05 for _, b in after]
    settle = next((after[i][0] + 3.0 - at_s for i in range(len(after)) if all(within[i:])), None)
    heard = float(grid.segments[-1].sample) / rate if len(grid.segments) > 1 else at_s  # the new tempo's first sample
    peak = max((b for a, b in after if a >= heard), default=float("nan"))
    base = float(np.median(before[-4:])) if before else float("nan")
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=rate, hop_length=FINE_HOP, units="samples")
    phase = [(float(grid.beat_at(int(s))) * 2 - round(float(grid.beat_at(int(s))) * 2)) * 30.0
             / float(grid.segment_at(int(s)).bpm) for s in onsets if s / rate >= at_s + 1.0]
    return {"fine_before_bpm": base, "fine_final_bpm": float(np.median([b for _, b in after[-6:]])) if after else None,
            "fine_settle_s": settle, "fine_overshoot": (peak - to) / (to - base) if peak > to else 0.0,
            "fine_worst_after": max((abs(b / to - 1) for _, b in after), default=None), "fine_heard_s": heard,
            "fine_transition": [(round(a + 1.5, 2), round(b, 1)) for a, b in after if a < heard],
            "fine_track": [(round(a + 1.5, 2), round(b, 1)) for a, b in track],
            "fine_median_abs_phase_ms": float(np.median(np.abs(phase)) * 1000) if phase else None,
            "grid_bpm": [float(s.bpm) for s in grid.segments], "grid_samples": [int(s.sample) for s in grid.segments]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_targets")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--vector", choices=("layer", "shipped"), default="layer")
    p.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the server's seed (every run)")
    p.add_argument("--warp", action="store_true",
                   help="the lock and step runs with the beat warp on too (/sync/lock/warp 1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model("toy", "cpu", "float32")
    # The demo's protocol: one middle layer (serve's default span does not order tempo on the toy, issue 19).
    if args.vector == "shipped":
        vec = shipped_path("tempo")
    else:
        vec = out / "tempo.safetensors"
        extract_vector(handle, load_concept("tempo"), layers=(args.layer,), progress=False).save(vec)
    span = ConceptKnob.of(load_vector(vec)).target_span or UNITS["tempo"].knob
    results: dict = {"vector": args.vector, "layer": args.layer, "span": list(span), "seed": args.seed,
                     "warp": args.warp}
    # A lock run is judged from 8 bars of the host on (the "after at most 8 bars"), for 16 s.
    runs = [("step", 120.0, 24.0), *[(f"lock{b:g}_{m}", b, 0.5 + 8 * 4 * 60.0 / b + 16.0) for b in (90.0, 120.0, 150.0)
                                     for m in ("on", "off")],
            ("ramp_on", 100.0, 40.0), ("ramp_off", 100.0, 40.0)]
    if args.runs:
        runs = [r for r in runs if r[0] in args.runs.split(",")]
    for name, bpm, seconds in tqdm(runs, desc="runs", unit="run"):
        actions = []
        if name == "step":
            actions = [(0.5, lambda s: s.commands.run("/steer/tempo/target/knob", [0.0], BENCH)),
                       (STEP_AT_S, lambda s: s.commands.run("/steer/tempo/target/knob", [1.0], BENCH))]
            if args.warp:  # the target's beats laid on a grid at its setpoint
                actions.insert(0, (0.5, lambda s: s.commands.run("/sync/lock/warp", [1], BENCH)))
        elif name.endswith("_on"):
            actions = [(0.5, lambda s: s.commands.run("/sync/lock", [1], BENCH))]
            if args.warp:
                actions.append((0.5, lambda s: s.commands.run("/sync/lock/warp", [1], BENCH)))
        if name.startswith("ramp"):  # 100 -> 140 BPM over 16 bars (64 beats), a step each beat, from t=4 s
            t, b = 4.0, 100.0
            for i in range(64):
                bb = 100.0 + 40.0 * (i + 1) / 64
                actions.append((t, lambda s, bb=bb: s.clock.source.request_tempo(bb)))
                t += 60.0 / b
                b = bb
        audio, rate, grid, trace, underruns, codes = run(handle, [str(vec)], out, name, bpm, seconds, actions,
                                                         seed=args.seed)
        record = {"underruns": underruns, "trace": trace}
        if name == "step":
            record.update(step_metrics(audio, rate, STEP_AT_S, span[1]), step_from=span[0], step_to=span[1])
            record.update(truth_step(codes, STEP_AT_S, span[1]))  # with the warp: the model's, not what played
            if args.warp:
                record.update(step_fine(audio, rate, grid, STEP_AT_S, span[0], span[1]))
        else:
            # after 8 bars of the host (the ramp: 8 bars after it starts), to the end
            start = 0.5 + 8 * 4 * 60.0 / bpm if not name.startswith("ramp") else 4.0 + 8 * 4 * 60.0 / 110.0
            tempo_err, phase, _ = judge(audio, rate, grid, start)
            record.update(median_abs_tempo_error=float(np.median(np.abs(tempo_err))) if len(tempo_err) else None,
                          median_abs_phase_ms=float(np.median(np.abs(phase)) * 1000) if len(phase) else None,
                          onsets=len(phase), **judge_fine(audio, rate, grid, start))
            if not (args.warp and name.endswith("_on")):  # warped, the codes' times are not what played
                record.update(truth_lock(codes, rate, grid, start))
        results[name] = record
        shown = {k: v for k, v in record.items() if k not in ("trace", "judged_track", "truth_track", "fine_track")}
        print(name, shown, flush=True)
    (out / "target_knobs.json").write_text(json.dumps(results, indent=1))
    plot(results, out)


def plot(results: dict, out: Path) -> None:
    if "step" in results:
        plot_step(results, out)
    if "lock120_on" in results and "ramp_on" in results:
        plot_lock(results, out)
    if results.get("warp") and all(f"{n}_{m}" in results for n in ("lock90", "lock120", "lock150", "ramp")
                                   for m in ("on", "off")):
        plot_warp(results, out)


def plot_warp(results: dict, out: Path) -> None:
    """Each onset's offset from the clock's nearest eighth (librosa's, on the recording), lock
    and warp on against the same run with neither; below, the slices' stretch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ("lock90", "lock120", "lock150", "ramp")
    fig, axes = plt.subplots(2, len(names), figsize=(14, 6), sharex="col", gridspec_kw={"height_ratios": [2, 1]})
    for i, name in enumerate(names):
        ax = axes[0, i]
        for mode, colour, label in (("off", "0.6", "no lock"), ("on", "C0", "lock + beat warp")):
            pts = results[f"{name}_{mode}"].get("fine_offsets_ms") or []
            ax.plot([t for t, _ in pts], [o for _, o in pts], ".", color=colour, ms=3, label=label)
        ax.axhspan(-40, 40, color="C2", alpha=0.12)
        ax.set_title(name.replace("lock", "host ").replace("ramp", "ramp 100 -> 140") + (" BPM" if "lock" in name else ""))
        ax.set_ylabel("onset - nearest eighth (ms)" if i == 0 else "")
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
        tr = results[f"{name}_on"]["trace"]
        axes[1, i].plot([r["t"] for r in tr], [(r.get("warp") or {}).get("stretch") for r in tr], "C0-")
        axes[1, i].axhline(1.0, color="0.5", lw=0.8)
        axes[1, i].set_xlabel("s")
        axes[1, i].set_ylabel("slice stretch (grid / own)" if i == 0 else "")
    fig.suptitle(f"The tempo lock with the beat warp, seed {results['seed']}: librosa's onsets against the clock's "
                 "grid (green: ±40 ms)")
    fig.tight_layout()
    fig.savefig(out / "tempo_lock_warp.png", dpi=100)


def plot_step(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    tr = results["step"]["trace"]
    ts = [r["t"] for r in tr]
    axes[0].plot(ts, [(r["loop"] or {}).get("measured") for r in tr], label="measured (sensor)")
    axes[0].plot(ts, [(r["loop"] or {}).get("setpoint") for r in tr], label="setpoint")
    axes[0].set_ylabel("BPM")
    axes[0].legend()
    axes[1].plot(ts, [r["alpha"] for r in tr])
    axes[1].set_ylabel("alpha played")
    axes[1].set_xlabel("s")
    lo, hi = results["span"]
    judged = results["step"].get("judged_track") or []
    axes[0].plot([t for t, _ in judged], [b for _, b in judged], ".", alpha=0.6, label="judged (librosa, recording)")
    truth = results["step"].get("truth_track") or []
    warped = bool(results.get("warp"))
    axes[0].plot([t for t, _ in truth], [b for _, b in truth], "k-", alpha=0.5,
                 label="the model played (drum codes, before the warp)" if warped else "played (the drum codes)")
    fine = results["step"].get("fine_track") or []
    if fine:  # the windows that hold the step are not judged: a gap in the line
        ft, fb = [], []
        for t, b in fine:
            if ft and t - ft[-1] > 0.75:
                ft.append((t + ft[-1]) / 2)
                fb.append(float("nan"))
            ft.append(t)
            fb.append(b)
        axes[0].plot(ft, fb, "C3.-", lw=2, ms=4, label="heard (librosa tempogram, 3 s windows, recording)")
        axes[0].axhspan(hi * 0.95, hi * 1.05, color="C2", alpha=0.12)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"tempo target: step {lo:g} -> {hi:g} BPM (knob 0 -> 1, {results['vector']} vector"
                 f"{', beat warp on' if warped else ''}, seed {results['seed']})")
    fig.savefig(out / "tempo_step_response.png", dpi=100)


def plot_lock(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in ("lock120_on", "ramp_on"):
        tr = results[name]["trace"]
        ax.plot([r["t"] for r in tr], [(r["loop"] or {}).get("measured") for r in tr], label=f"{name} measured")
        ax.plot([r["t"] for r in tr], [r["bpm"] for r in tr], "--", label=f"{name} host")
    ax.set_ylabel("BPM")
    ax.legend()
    fig.savefig(out / "tempo_lock.png", dpi=100)


if __name__ == "__main__":
    main()
