"""The toy model's figures: what steering does (known-effect check) and how fast it plays.

    python benchmarks/toy_effects.py [--seeds 5] [--points 7] [--pipeline-seconds 20] [--json out.json]
    python benchmarks/toy_effects.py --pipeline-only [--pipeline-runs 3]

1. ``known_effect_check`` (steering_core/toy/known_effect.py): conditioning ratios and alpha
   sweeps for tempo and timbre, for the diffmean and the logistic-probe vectors.
2. The live pipeline's real-time factor, as ``serve`` runs it, steered: one decode step
   per frame (the stream ``open_stream`` picks, as serve) with the tempo and timbre
   vectors on, the chunked codec with the model's own chunk and context
   (``CodecStreaming.for_model``, as serve), pedalboard's resampler to 48 kHz and the
   ``default`` effect chain with its limiter. rtf = audio seconds / wall seconds, the
   median of ``--pipeline-runs`` runs (a shared machine's speed wanders from run to run).
3. The codec's held-out reconstruction (``steering_core.toy.training.codec_report``).
4. ``data_direction_check`` for tempo and timbre: the direction from labelled world audio
   (as ``extract --data``) against the prompt-set one, and its own sweep.

Prints one JSON object (and writes it with ``--json``). Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pipeline_rtf(seconds: float, runs: int = 3, codec_chunk: int | None = None) -> dict[str, object]:
    """The live pipeline ``runs`` times over, as serve runs it; rtf per run and the median,
    and where a frame's time goes (decode step, codec, resampler + chain) in the last run.
    ``codec_chunk``: frames per codec decode, as ``serve --codec-chunk`` (None: the model's own)."""
    import statistics
    from dataclasses import replace

    import numpy as np
    import torch

    from bridge.live.audio_path import AudioPath
    from bridge.live.chains import load_chain
    from bridge.live.ring import Ring
    from steering_core.codec.streaming import ChunkedDecoder, CodecStreaming
    from steering_core.extract.concepts import load_concept
    from steering_core.extract.extraction import extract_vector
    from steering_core.model.loading import load_model
    from steering_core.steer.steerer import Steerer
    from steering_core.stream.static_step import open_stream

    torch.set_num_threads(1)  # as serve runs
    handle = load_model("toy", device="cpu")
    steerer = Steerer(handle)
    for name, alpha in (("tempo", 3.0), ("timbre", -3.0)):
        steerer.add(extract_vector(handle, load_concept(name), progress=False), alpha=alpha)
    frames = round(seconds * handle.frame_rate)
    streaming = CodecStreaming.for_model(handle)
    if codec_chunk is not None:
        streaming = replace(streaming, chunk_frames=codec_chunk)
    rtfs: list[float] = []
    for _ in range(runs):
        decoder = ChunkedDecoder.streaming(handle, streaming)  # the codec settings serve uses for this model
        ring = Ring(48000 * 4, 2)
        path = AudioPath(handle.sample_rate, 48000, ring, load_chain("default"))
        # The stream serve opens: the static step on a CPU (cuda_graphs "auto" is eager there).
        stream = open_stream(handle, "an instrumental piece with drums and a lead synth", seed=0, steerer=steerer)
        spent = {"step": 0.0, "codec": 0.0, "chain": 0.0}
        with stream.steering():
            stream.generate_frames(10)  # warm-up
            start = time.perf_counter()
            made = 0
            while made < frames:
                before = stream.frames_complete
                t0 = time.perf_counter()
                stream.step()
                t1 = time.perf_counter()
                spent["step"] += t1 - t0
                if stream.frames_complete > before:
                    decoder.push(stream.codes[:, :, before:stream.frames_complete])
                    made += stream.frames_complete - before
                if made >= decoder.emitted_frames + decoder.frames_per_pull:  # a chunk is ready, as in the engine
                    audio = decoder.pull()[0]
                    t2 = time.perf_counter()
                    spent["codec"] += t2 - t1
                    if audio.shape[-1]:
                        path.push(audio)
                        ring.read = ring.written  # a sound card that keeps up
                    spent["chain"] += time.perf_counter() - t2
            wall = time.perf_counter() - start
        rtfs.append(round(frames / handle.frame_rate / wall, 2))
    peak = float(np.abs(ring._data).max())
    return {"audio_s": round(frames / handle.frame_rate, 2), "stream": type(stream).__name__,
            "codec_streaming": streaming.as_dict(), "rtf_runs": rtfs,
            "rtf": statistics.median(rtfs), "ms_per_frame": {k: round(v / frames * 1000, 2) for k, v in spent.items()},
            "peak_after_chain": round(peak, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--points", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pipeline-seconds", type=float, default=20.0)
    parser.add_argument("--pipeline-runs", type=int, default=3)
    parser.add_argument("--codec-chunk", type=int, default=None, help="frames per codec decode (default: the model's)")
    parser.add_argument("--pipeline-only", action="store_true", help="only the live pipeline's rtf (a minute)")
    parser.add_argument("--methods", default="diffmean,probe_logistic")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()

    import torch

    from steering_core.model.loading import load_model
    from steering_core.toy.known_effect import known_effect_check
    from steering_core.toy.training import codec_report

    if args.pipeline_only:
        print(json.dumps(pipeline_rtf(args.pipeline_seconds, args.pipeline_runs, args.codec_chunk)))
        return 0
    torch.set_num_threads(2)
    handle = load_model("toy", device="cpu")
    started = time.perf_counter()
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}",
        "torch": torch.__version__,
        "codec": codec_report(handle.model),
        "pipeline": pipeline_rtf(args.pipeline_seconds, args.pipeline_runs, args.codec_chunk),
    }
    torch.set_num_threads(2)
    for method in args.methods.split(","):
        report = known_effect_check(handle, seeds=args.seeds, points=args.points, seconds=args.seconds, method=method)
        result[method] = {k: v for k, v in report.items() if k != "lines"}
        print("\n".join(report["lines"]), file=sys.stderr)
    from steering_core.toy.known_effect import data_direction_check

    result["data_direction"] = {}
    for concept in ("tempo", "timbre"):
        check = data_direction_check(handle, concept, seeds=args.seeds, points=args.points, seconds=args.seconds)
        result["data_direction"][concept] = check
        print(check["line"], file=sys.stderr)
    result["seconds_taken"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
