"""Every GPU figure in one run: prints one JSON object, then a Markdown table.

For musicgen-small, -medium and -large (the real shapes, RANDOM weights, bf16, CFG 3,
top-k 250, steered with 4 concepts on 8 layers), in one process, each measured here:

* ``rtf_loop``: today's decode loop (``MusicStream``), tokens only;
* ``rtf_eager``: the static step (``StaticStream``) without graphs;
* ``rtf_graphs``: the static step replayed as a CUDA graph (after its self-check;
  ``graph_state`` says whether it stayed on graphs);
* ``rtf_generate``: transformers' ``generate()``, same length and settings;
* ``reprime_ms``: one re-prime (prefill of half the trained window) of the static stream;
* ``first_audio_ms``: prompt in -> first decoded audio chunk out, static step;
* for small only: ``max_realtime_streams`` (batched static streams with graphs, per-stream
  rtf >= 1); ``max_realtime_stems`` (a ``StemStream``: every stem its own prompt, seed and
  knob values, its tokens decoded to audio by the streaming codec as serve does, per-stem
  rtf >= 1); and a serve soak (``benchmarks/serve_soak.py``, 60 s, knob traffic at 50/s):
  control latency p50/p95.

rtf = seconds of audio per second of wall time (> 1 is faster than real time).

    python benchmarks/gpu_figures.py                 # on the GPU machine, <= 8 min on an H100
    python benchmarks/gpu_figures.py --smoke         # tiny, a few seconds, any machine (CI)
    python benchmarks/gpu_figures.py --allow-cpu     # the full run without a GPU (hours; refused without it)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.tools.bench import PROMPT, _generate_seconds, random_concepts  # noqa: E402
from steering_core.codec.streaming import ChunkedDecoder  # noqa: E402
from steering_core.model.loading import MusicGenHandle, load_model  # noqa: E402
from steering_core.stream.decode_loop import MusicStream  # noqa: E402
from steering_core.stream.sampling import SamplingSettings  # noqa: E402
from steering_core.stream.static_step import StaticStream  # noqa: E402
from steering_core.stream.stem_stream import StemStream  # noqa: E402


def _sync(handle: MusicGenHandle) -> None:
    if handle.device.type == "cuda":
        torch.cuda.synchronize(handle.device)


def _timed_rtf(handle: MusicGenHandle, frames: int, settings: SamplingSettings, kind: str,
               streams: int = 1) -> tuple[float, str]:
    """Per-stream rtf of ``frames`` steered frames (after a warm-up that also captures and
    checks the graph), and the static stream's graph state."""
    steerer = random_concepts(handle)
    prompts = [PROMPT] * streams
    if kind == "loop":
        stream: MusicStream = MusicStream(handle, prompts, seed=0, settings=settings, steerer=steerer)
    else:
        stream = StaticStream(handle, prompts, seed=0, settings=settings, steerer=steerer,
                              cuda_graphs="on" if kind == "graphs" else "off")
    with stream.steering():
        stream.generate_frames(min(20, frames))  # warm-up (and the graph's capture + check)
        _sync(handle)
        start = time.perf_counter()
        stream.generate_frames(frames)
        _sync(handle)
        took = time.perf_counter() - start
    state = getattr(stream, "graph_state", "loop")
    return frames / handle.frame_rate / took, state


def _reprime_ms(handle: MusicGenHandle, settings: SamplingSettings, graphs: bool) -> float:
    reprime = handle.window_frames // 2
    stream = StaticStream(handle, PROMPT, seed=2, settings=settings, steerer=random_concepts(handle),
                          window_frames=reprime + handle.num_codebooks + 1, reprime_frames=reprime,
                          cuda_graphs="auto" if graphs else "off")
    with stream.steering():
        while stream.pos < stream.window_frames:
            stream.step()
        _sync(handle)
        start = time.perf_counter()
        stream.step()
        _sync(handle)
    assert stream.reprimes == 1, "the timed step was not the re-prime"
    return (time.perf_counter() - start) * 1000


def _first_audio_ms(handle: MusicGenHandle, settings: SamplingSettings) -> float:
    _sync(handle)
    start = time.perf_counter()
    stream = StaticStream(handle, PROMPT, seed=1, settings=settings, steerer=random_concepts(handle),
                          cuda_graphs="off")  # a graph's capture + check is not on the first chunk's path
    decoder = ChunkedDecoder(handle)
    with stream.steering():
        while True:
            decoder.push(stream.generate_frames(1))
            if decoder.pull().shape[-1] > 0:
                break
    _sync(handle)
    return (time.perf_counter() - start) * 1000


def _max_streams(handle: MusicGenHandle, frames: int, settings: SamplingSettings, graphs: bool,
                 limit: int) -> dict[str, Any]:
    sweep = []
    n = 1
    while n <= limit:
        rtf, state = _timed_rtf(handle, frames, settings, "graphs" if graphs else "eager", streams=n)
        sweep.append({"streams": n, "rtf_per_stream": round(rtf, 3), "graph_state": state})
        if rtf < 1.0:
            break
        n *= 2
    ok = [row["streams"] for row in sweep if row["rtf_per_stream"] >= 1.0]
    return {"max_realtime_streams": max(ok) if ok else 0, "streams_sweep": sweep}


def _stems_rtf(handle: MusicGenHandle, frames: int, settings: SamplingSettings, graphs: bool, stems: int) -> float:
    """Per-stem rtf of ``stems`` stems in one batch, each its own prompt, seed and knobs,
    tokens and codec decode (the streaming decoder, serve's chunks), after a warm-up."""
    steerer = random_concepts(handle)
    stream = StemStream(handle, [f"{PROMPT}, part {i}" for i in range(stems)], seeds=list(range(stems)),
                        settings=settings, steerer=steerer, cuda_graphs="on" if graphs else "off")
    for i in range(stems):  # separate knobs: each stem's alphas its own
        for j, name in enumerate(steerer.concepts):
            steerer.set_alpha(name, ((i + j) % 5 - 2) * 0.5, stream=i)
    decoder = ChunkedDecoder.streaming(handle)
    with stream.steering():
        stream.generate_frames(min(20, frames))  # warm-up (and the graph's capture + check)
        decoder.push(stream.codes[:, :, :stream.frames_complete])
        decoder.pull()
        pushed = stream.frames_complete
        _sync(handle)
        start, goal = time.perf_counter(), pushed + frames
        while stream.frames_complete < goal:
            stream.generate_frames(decoder.chunk)
            decoder.push(stream.codes[:, :, pushed:stream.frames_complete])
            pushed = stream.frames_complete
            decoder.pull()
        _sync(handle)
        took = time.perf_counter() - start
    return frames / handle.frame_rate / took


def _max_stems(handle: MusicGenHandle, frames: int, settings: SamplingSettings, graphs: bool,
               limit: int) -> dict[str, Any]:
    sweep = []
    n = 1
    while n <= limit:
        rtf = _stems_rtf(handle, frames, settings, graphs, n)
        sweep.append({"stems": n, "rtf_per_stem": round(rtf, 3)})
        if rtf < 1.0:
            break
        n *= 2
    ok = [row["stems"] for row in sweep if row["rtf_per_stem"] >= 1.0]
    return {"max_realtime_stems": max(ok) if ok else 0, "stems_sweep": sweep}


def _soak(model: str, seconds: float, device: str, graphs: str) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_soak.py"), "--model", model, "--seconds", str(seconds),
           "--rate", "50", "--extra", f"--device {device} --cuda-graphs {graphs}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:] or ["soak failed"]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    latency = result.get("control_latency_ms") or {}
    return {"soak_seconds": seconds, "control_latency_ms": latency, "underruns": result.get("underruns"),
            "soak_rtf": result.get("rtf")}


def measure_model(model: str, seconds: float, device: str, dtype: str, with_streams: bool, stream_limit: int,
                  soak_seconds: float) -> dict[str, Any]:
    handle = load_model(model, device, dtype)
    cuda = handle.device.type == "cuda"
    frames = max(8, round(seconds * handle.frame_rate))
    settings = SamplingSettings(guidance_scale=3.0, top_k=250)
    row: dict[str, Any] = {"model": model, "device": torch.cuda.get_device_name(handle.device) if cuda else "cpu",
                           "dtype": str(handle.dtype).removeprefix("torch."), "frames": frames}
    row["rtf_loop"] = round(_timed_rtf(handle, frames, settings, "loop")[0], 3)
    row["rtf_eager"] = round(_timed_rtf(handle, frames, settings, "eager")[0], 3)
    if cuda:
        rtf, state = _timed_rtf(handle, frames, settings, "graphs")
        row["rtf_graphs"], row["graph_state"] = round(rtf, 3), state
    else:
        row["rtf_graphs"], row["graph_state"] = None, "no CUDA"
    _generate_seconds(handle, min(frames, 20), settings)  # warm-up
    row["rtf_generate"] = round(frames / handle.frame_rate / _generate_seconds(handle, frames, settings), 3)
    best = row["rtf_graphs"] or row["rtf_eager"]
    row["speedup_vs_generate"] = round(best / row["rtf_generate"], 2)
    row["reprime_ms"] = round(_reprime_ms(handle, settings, graphs=cuda), 1)
    row["first_audio_ms"] = round(_first_audio_ms(handle, settings), 1)
    if with_streams:
        row.update(_max_streams(handle, max(8, frames // 2), settings, cuda, stream_limit))
        row.update(_max_stems(handle, max(8, frames // 2), settings, cuda, stream_limit))
    del handle
    if cuda:
        torch.cuda.empty_cache()
    if soak_seconds > 0:
        row.update(_soak(model, soak_seconds, device, "auto"))
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["model", "dtype", "rtf_loop", "rtf_eager", "rtf_graphs", "graph_state", "rtf_generate",
            "speedup_vs_generate", "reprime_ms", "first_audio_ms", "max_realtime_streams", "max_realtime_stems",
            "control_latency_ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            if c == "control_latency_ms" and isinstance(v, dict):
                v = f"p50 {v.get('p50')} / p95 {v.get('p95')}"
            cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny, float32, a few seconds: proves the script runs")
    p.add_argument("--models", default=None, help="comma-separated (default musicgen-small,medium,large)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --smoke)")
    p.add_argument("--seconds", type=float, default=None, help="audio seconds per timed run (default 10; smoke 1)")
    p.add_argument("--soak-seconds", type=float, default=None, help="serve soak, first model (default 60; smoke 3; 0 skips)")
    p.add_argument("--max-streams", type=int, default=None, help="where the streams sweep stops (default 64; smoke 2)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="measure the full figures on a CPU anyway (hours: the large shape alone is far below real time)")
    args = p.parse_args(argv)
    smoke = args.smoke
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not smoke and not on_gpu and not args.allow_cpu:
        print("gpu_figures: no GPU here (torch sees no CUDA device, or --device cpu): the full figures take about "
              "8 min on an H100 and hours on a CPU. Run it on a GPU machine; --smoke proves it runs anywhere in "
              "seconds; --allow-cpu measures here anyway.", file=sys.stderr)
        return 2
    models = (args.models or ("tiny" if smoke else "musicgen-small,musicgen-medium,musicgen-large")).split(",")
    dtype = args.dtype or ("float32" if smoke else "bfloat16")
    seconds = args.seconds or (1.0 if smoke else 10.0)
    soak = args.soak_seconds if args.soak_seconds is not None else (3.0 if smoke else 60.0)
    limit = args.max_streams or (2 if smoke else 64)
    print(f"gpu_figures: measuring {', '.join(models)} ({dtype}, {seconds:g} s per timed run; the streams sweep "
          f"to {limit} and a {soak:g} s serve soak on {models[0]}) on {'the GPU' if on_gpu else 'the CPU'}; "
          + ("a few seconds" if smoke else "about 8 min on an H100" if on_gpu else "hours on a CPU"),
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    rows = []
    for i, model in enumerate(models):
        first = i == 0  # the streams sweep and the soak: small (the first model) only
        rows.append(measure_model(model, seconds, args.device, dtype, first, limit, soak if first else 0.0))
    result = {"torch": torch.__version__, "smoke": smoke, "wall_s": round(time.perf_counter() - started, 1),
              "models": rows}
    print(json.dumps(result))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
