"""Stems (issue 20): the figures, printed as one JSON object per part.

* ``centroid``: three toy stems with different prompts in one batch; the timbre knob
  turned on one of them. Each stem's spectral centroid (its own audio, decoded from its
  row) against the same batch with the knob at rest, for every seed; beside it, the shift
  the same knob gives that stem's prompt played alone, and each stem's seed spread (the
  standard deviation of its centroid across seeds, knob at rest). Also whether every
  stem's tokens equal its prompt and seed played alone.
* ``capacity``: how many toy stems, each through the default effect chain and recorded,
  ``serve`` plays in real time: a set of N stems served for ``--seconds`` on
  ``--audio-out none`` (the silent clock at real time) and on JACK ports (``jackd -d
  dummy``, when installed), with its underruns and rtf; 1 torch thread.

    python benchmarks/stems.py                       # both parts (a few minutes on 2 cores)
    python benchmarks/stems.py --part capacity --stems 1,2,4,8 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bridge.live.options import ServeOptions  # noqa: E402
from bridge.live.serve import Server, default_vectors  # noqa: E402
from steering_core.audio import spectral_centroid  # noqa: E402
from steering_core.codec.streaming import decode  # noqa: E402
from steering_core.model.loading import MusicGenHandle, load_model  # noqa: E402
from steering_core.steer.steerer import Steerer  # noqa: E402
from steering_core.steer.vectors import load_vector  # noqa: E402
from steering_core.stream.stem_stream import StemStream  # noqa: E402

PROMPTS = ["fast drums with a dry kick", "a deep bass line in a minor key", "soft piano chords, major, slow"]


def _stems(handle: MusicGenHandle, vector: Any, prompts: list[str], seeds: list[int], alphas: list[float],
           frames: int) -> tuple[np.ndarray, torch.Tensor]:
    """Each row's centroid and tokens, with each row's timbre alpha from the start."""
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    stream = StemStream(handle, prompts, seeds=seeds, steerer=steerer)
    for row, alpha in enumerate(alphas):
        steerer.set_alpha(vector.concept, alpha, stream=row)
    with stream.steering():
        stream.generate_frames(frames)
    codes = stream.codes[:, :, :frames].clone()
    audio = decode(handle, codes)
    return np.array([spectral_centroid(a, handle.sample_rate) for a in audio]), codes


def centroid_part(seeds: int, seconds: float, knob: float) -> dict[str, Any]:
    handle = load_model("toy", "cpu")
    vector = load_vector(default_vectors(handle)[0])
    assert vector.concept == "timbre"
    lo, hi = vector.alpha_range
    alpha = lo + knob * (hi - lo)
    frames = round(seconds * handle.frame_rate)
    rest, turned, alone_shift, identical = [], [], [], True
    for s in tqdm(range(seeds), desc="seeds"):
        seed_row = [3 * s, 3 * s + 1, 3 * s + 2]
        c0, codes0 = _stems(handle, vector, PROMPTS, seed_row, [0.0, 0.0, 0.0], frames)
        c1, codes1 = _stems(handle, vector, PROMPTS, seed_row, [0.0, alpha, 0.0], frames)
        rest.append(c0)
        turned.append(c1)
        a0, alone0 = _stems(handle, vector, PROMPTS[1:2], seed_row[1:2], [0.0], frames)
        a1, alone1 = _stems(handle, vector, PROMPTS[1:2], seed_row[1:2], [alpha], frames)
        alone_shift.append(float(a1[0] - a0[0]))
        identical &= torch.equal(alone0[0], codes0[1]) and torch.equal(alone1[0], codes1[1])
    r, t = np.array(rest), np.array(turned)
    shift = (t - r).mean(axis=0)
    return {"part": "centroid", "model": "toy", "seeds": seeds, "seconds": seconds, "knob": knob, "alpha": alpha,
            "stem_turned": 1, "prompts": PROMPTS,
            "centroid_hz_at_rest": [round(float(x), 1) for x in r.mean(axis=0)],
            "centroid_shift_hz": [round(float(x), 1) for x in shift],
            "seed_spread_hz": [round(float(x), 1) for x in r.std(axis=0)],
            "alone_shift_hz": round(float(np.mean(alone_shift)), 1),
            "turned_stem_tokens_equal_alone": identical}


def _serve(stems: int, seconds: float, audio_out: str, tmp: Path) -> dict[str, Any]:
    options = ServeOptions(model="toy", osc_port=0, audio_out=audio_out, status_line=False,
                           record=str(tmp / f"set{stems}.wav"), scenes_dir=str(tmp / "scenes"),
                           stems=[f"s{i}={PROMPTS[i % 3]}" for i in range(stems)], threads=1)
    server = Server(options)
    server.start()
    try:
        time.sleep(seconds)
        status = server.status()
    finally:
        server.stop()
    return {"stems": stems, "audio_out": audio_out, "underruns": status["underruns"], "rtf": status["rtf"],
            "samples_requested": status["samples_requested"], "samples_played": status["samples_played"]}


def capacity_part(counts: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        outputs = ["none"]
        jackd = None
        if shutil.which("jackd"):
            name = f"bench-stems-{os.getpid()}"
            os.environ.update({"JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"})
            jackd = subprocess.Popen(["jackd", "--no-realtime", "-n", name, "-d", "dummy", "-r", "48000", "-p",
                                      "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            outputs.append("jack")
        try:
            for out in outputs:
                for n in tqdm(counts, desc=f"stems on {out}"):
                    rows.append(_serve(n, seconds, out, tmp))
        finally:
            if jackd is not None:
                jackd.terminate()
                jackd.wait(10)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "centroid", "capacity"), default="all")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0, help="audio per run (centroid) or serve time (capacity)")
    p.add_argument("--knob", type=float, default=0.9, help="the timbre knob's position on the turned stem (0..1)")
    p.add_argument("--stems", default="1,2,3,4,6,8", help="stem counts for the capacity part")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(json.dumps({"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load], "torch": torch.__version__}))
    if args.part in ("all", "centroid"):
        print(json.dumps(centroid_part(args.seeds, min(args.seconds, 4.0), args.knob)), flush=True)
    if args.part in ("all", "capacity"):
        for row in capacity_part([int(x) for x in args.stems.split(",")], args.seconds):
            print(json.dumps({"part": "capacity", **row}), flush=True)
    print(json.dumps({"load_after": [round(x, 2) for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
