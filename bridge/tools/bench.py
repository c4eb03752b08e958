"""``steerbridge bench``: the engine beside transformers' own ``generate()``, same run.

Both sides use the same model, device, dtype, CFG (guidance 3), top-k and length, and
each is warmed up once before it is timed. Figures are measured, never assumed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from steering_core.codec.streaming import ChunkedDecoder, decode
from steering_core.model.loading import MusicGenHandle, load_model
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.static_step import CudaGraphsMode, StaticStream, count_graph_breaks

PROMPT = "an energetic electronic track with punchy drums"

log = logging.getLogger("steerbridge.bench")


def _sync(handle: MusicGenHandle) -> None:
    if handle.device.type == "cuda":
        torch.cuda.synchronize()


def _engine_seconds(handle: MusicGenHandle, frames: int, steerer: Steerer | None, settings: SamplingSettings,
                    static: bool = False, cuda_graphs: CudaGraphsMode = "off") -> tuple[float, torch.Tensor]:
    """Seconds for ``frames`` frames of today's loop (or the static step), and the codes."""
    if static:
        stream: MusicStream = StaticStream(handle, PROMPT, seed=0, settings=settings, steerer=steerer,
                                           cuda_graphs=cuda_graphs)
    else:
        stream = MusicStream(handle, PROMPT, seed=0, settings=settings, steerer=steerer)
    _sync(handle)
    start = time.perf_counter()
    with stream.steering():
        codes = stream.generate_frames(frames)
    _sync(handle)
    return time.perf_counter() - start, codes


@torch.inference_mode()
def _generate_seconds(handle: MusicGenHandle, frames: int, settings: SamplingSettings) -> float:
    inputs = handle.tokenizer([PROMPT], return_tensors="pt").to(handle.device)
    _sync(handle)
    start = time.perf_counter()
    handle.model.generate(**inputs, max_new_tokens=frames + handle.num_codebooks // handle.audio_channels - 1, do_sample=True,
                          guidance_scale=settings.guidance_scale, top_k=settings.top_k)
    _sync(handle)
    return time.perf_counter() - start


def random_concepts(handle: MusicGenHandle, concepts: int = 4, layers: int = 8) -> Steerer:
    """``concepts`` random unit directions on ``layers`` middle layers, knobs at 1.0."""
    steerer = Steerer(handle)
    span = min(layers, handle.num_layers)
    first = (handle.num_layers - span) // 2
    g = torch.Generator().manual_seed(0)
    for i in range(concepts):
        vec = SteeringVector(concept=f"c{i}", directions=torch.randn(span, handle.d_model, generator=g),
                             layers=tuple(range(first, first + span)))
        steerer.add(vec, alpha=1.0)
    return steerer


def reprime_ms(handle: MusicGenHandle, settings: SamplingSettings) -> dict[str, float]:
    """The longest step an endless stream takes: one re-prime at the real re-prime length
    (half the trained window), a prefill of that many positions. The window is set just
    past it, so the stream reaches its first re-prime after ``reprime`` frames, not 2x."""
    reprime = handle.window_frames // 2
    stream = MusicStream(handle, PROMPT, seed=2, settings=settings, steerer=random_concepts(handle),
                         window_frames=reprime + handle.num_codebooks + 1, reprime_frames=reprime)
    with stream.steering():
        while stream.pos < stream.window_frames:
            stream.step()
        probe = stream.measure_reprime()  # what serve's engine buffers for, to set beside the real one
        _sync(handle)
        start = time.perf_counter()
        stream.step()
        _sync(handle)
        took = time.perf_counter() - start
    assert stream.reprimes == 1, "the timed step was not the re-prime"
    return {"reprime_frames": reprime, "reprime_ms": round(took * 1000, 2), "reprime_probe_ms": round(probe * 1000, 2)}


def batched_rtf(handle: MusicGenHandle, streams: int, frames: int, settings: SamplingSettings) -> float:
    """Real-time factor of each of ``streams`` steered streams run as one batch: audio
    seconds per stream over the wall time to generate and decode them all."""
    steerer = random_concepts(handle)
    stream = MusicStream(handle, [PROMPT] * streams, seed=0, settings=settings, steerer=steerer)
    with stream.steering():
        stream.generate_frames(min(frames, 10))  # warm-up at this batch size
        _sync(handle)
        start = time.perf_counter()
        codes = stream.generate_frames(frames)
        decode(handle, codes)
        _sync(handle)
    return frames / handle.frame_rate / (time.perf_counter() - start)


def streams_sweep(handle: MusicGenHandle, frames: int, settings: SamplingSettings,
                  max_streams: int = 256) -> dict[str, Any]:
    """Batch 1, 2, 4, ... streams until one batch no longer keeps real time (rtf < 1)
    per stream, or ``max_streams``. Returns each batch's per-stream rtf and the largest
    batch measured in real time."""
    sweep: list[dict[str, float]] = []
    n = 1
    while n <= max_streams:
        rtf = batched_rtf(handle, n, frames, settings)
        sweep.append({"streams": n, "rtf_per_stream": round(rtf, 3)})
        if rtf < 1.0:
            break
        n *= 2
    realtime = [row["streams"] for row in sweep if row["rtf_per_stream"] >= 1.0]
    return {"streams_sweep": sweep, "max_realtime_streams": int(max(realtime)) if realtime else 0}


#: Repeats that disagree by more than this (slowest over fastest, minus one) mean a busy machine.
SPREAD_WARNING = 0.20


def spread(times: list[float]) -> float:
    """(slowest − fastest) / fastest: 0 when every repeat took the same time."""
    return (max(times) - min(times)) / min(times) if times and min(times) > 0 else 0.0


def repeat_warnings(spreads: dict[str, float], limit: float = SPREAD_WARNING) -> list[str]:
    """One line per timed side whose repeats disagree by more than ``limit``."""
    noisy = {name: value for name, value in spreads.items() if value > limit}
    if not noisy:
        return []
    detail = ", ".join(f"{name} {value:.0%}" for name, value in noisy.items())
    return [f"repeats disagree by more than {limit:.0%} ({detail}): the machine is busy or its clock varies, so "
            "speedup, rtf and steering_overhead are not to be trusted; rerun on a quiet machine or with more --repeats"]


def static_step_figures(handle: MusicGenHandle, settings: SamplingSettings) -> dict[str, Any]:
    """Graph breaks of the static step (``torch._dynamo.explain``), steered, after a few steps."""
    stream = StaticStream(handle, PROMPT, seed=0, settings=settings, steerer=random_concepts(handle))
    with stream.steering():
        stream.generate_frames(2)
        return {"graph_breaks": count_graph_breaks(stream)}


def run_bench(model: str, seconds: float, device: str = "auto", dtype: str = "auto", repeats: int = 3,
              max_streams: int = 0, reprime: bool = False, cuda_graphs: CudaGraphsMode = "auto") -> dict[str, Any]:
    """The figures ``steerbridge bench`` prints; ``max_streams`` > 0 adds the batched-streams
    sweep, ``reprime`` the time of one re-prime. The static step (``StaticStream``, with
    ``cuda_graphs``) is timed steered beside today's loop, same settings, same seed."""
    handle = load_model(model, device, dtype)
    frames = max(8, round(seconds * handle.frame_rate))
    settings = SamplingSettings(guidance_scale=3.0, top_k=250)
    steerer = random_concepts(handle)
    # Warm-up: kernels, allocator, lazily built buffers.
    _engine_seconds(handle, min(frames, 20), None, settings)
    _engine_seconds(handle, min(frames, 20), steerer, settings, static=True, cuda_graphs=cuda_graphs)
    _generate_seconds(handle, min(frames, 20), settings)
    # Interleaved, so drift in the machine (clocks, other load) hits every side alike.
    runs: dict[str, list[float]] = {"engine": [], "steered": [], "static": [], "hf": []}
    run_codes: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        runs["engine"].append(_engine_seconds(handle, frames, None, settings)[0])
        took, run_codes["steered"] = _engine_seconds(handle, frames, steerer, settings)
        runs["steered"].append(took)
        took, run_codes["static"] = _engine_seconds(handle, frames, steerer, settings, static=True, cuda_graphs=cuda_graphs)
        runs["static"].append(took)
        runs["hf"].append(_generate_seconds(handle, frames, settings))
    engine, steered, static, hf = min(runs["engine"]), min(runs["steered"]), min(runs["static"]), min(runs["hf"])
    spreads = {name: spread(times) for name, times in runs.items()}
    warnings = repeat_warnings(spreads)
    for line in warnings:
        log.warning("%s", line)

    stream = MusicStream(handle, PROMPT, seed=0, settings=settings)
    codes = stream.generate_frames(frames)
    _sync(handle)
    start = time.perf_counter()
    decode(handle, codes)
    _sync(handle)
    decode_s = time.perf_counter() - start

    # First audio: prompt in -> first chunk of decoded samples out.
    _sync(handle)
    start = time.perf_counter()
    first = MusicStream(handle, PROMPT, seed=1, settings=settings)
    dec = ChunkedDecoder(handle)
    while True:
        dec.push(first.generate_frames(1))
        if dec.pull().shape[-1] > 0:
            break
    _sync(handle)
    first_audio_ms = (time.perf_counter() - start) * 1000

    audio_s = frames / handle.frame_rate
    sweep = streams_sweep(handle, frames, settings, max_streams) if max_streams > 0 else {}
    reprime_figures = reprime_ms(handle, settings) if reprime else {}
    return {
        "model": model,
        "device": str(handle.device),
        "device_name": torch.cuda.get_device_name(handle.device) if handle.device.type == "cuda" else "cpu",
        "dtype": str(handle.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "frames": frames,
        "cfg": True,
        "engine_steps_per_s": round(frames / engine, 2),
        "hf_generate_steps_per_s": round(frames / hf, 2),
        "speedup": round(hf / engine, 3),
        "rtf": round(audio_s / (steered + decode_s), 3),
        "rtf_unsteered": round(audio_s / (engine + decode_s), 3),
        "steering_overhead": round(steered / engine - 1, 4),
        "static_step": {
            "tokens_identical": bool(torch.equal(run_codes["steered"], run_codes["static"])),
            **static_step_figures(handle, settings),
            "steered_steps_per_s": round(frames / static, 2),
            "loop_steered_steps_per_s": round(frames / steered, 2),
            "speedup_vs_loop": round(steered / static, 3),
            "rtf": round(audio_s / (static + decode_s), 3),
            "cuda_graphs": cuda_graphs,
        },
        "first_audio_ms": round(first_audio_ms, 1),
        "torch": torch.__version__,
        "repeats": repeats,
        **{f"{name}_spread": round(value, 3) for name, value in spreads.items()},
        "warnings": warnings,
        **sweep,
        **reprime_figures,
    }
