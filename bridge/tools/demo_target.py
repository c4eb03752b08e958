"""The demo's target knob: a tempo target run offline, closed loop, faster than real time.

The same ``TargetLoop`` as the live engine, fed the audio of each codec chunk as it is
decoded; its alphas go into the ``Performance`` at the next step, as the engine applies
them. Without a clock the loop reads once per beat of its own setpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bridge.live.target_loop import TargetAsk, TargetLoop
from steering_core.codec.streaming import ChunkedDecoder, CodecStreaming
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.timeline import Performance

from .plots import target_response

SETPOINTS = (80.0, 150.0)  # BPM: within the toy's tempo range (60-180), far enough apart to hear


def target_run(handle: MusicGenHandle, vector: SteeringVector, prompt: str, out: Path, *, seconds: float = 8.0,
               setpoints: tuple[float, float] = SETPOINTS, seed: int = 0) -> dict[str, object]:
    """Tempo target at ``setpoints[0]``, stepped to ``setpoints[1]`` halfway; the trace and a plot."""
    steerer = Steerer(handle)
    steerer.add(vector, alpha=0.0)
    stream = MusicStream(handle, prompt, seed=seed, steerer=steerer)
    performance = Performance(stream, steerer)
    decoder = ChunkedDecoder.streaming(handle, CodecStreaming.for_model(handle))
    loop = TargetLoop({vector.concept: vector.alpha_range}, handle.sample_rate, 1.0)
    frames = int(seconds * handle.frame_rate)
    trace: list[tuple[float, float, float, float]] = []  # (s, setpoint, measured, alpha)
    at, pushed = 0, 0
    with stream.steering():
        loop.ask(TargetAsk(vector.concept, setpoints[0]), performance.current)
        while decoder.emitted_frames < frames:
            if decoder.emitted_frames >= frames // 2 and loop.active[(0, vector.concept)].setpoint != setpoints[1]:
                loop.ask(TargetAsk(vector.concept, setpoints[1]), performance.current)
            need = decoder.emitted_frames + decoder.frames_per_pull
            while stream.frames_complete < need:
                performance.step()
            decoder.push(stream.codes[:, :, pushed:stream.frames_complete])
            pushed = stream.frames_complete
            audio = decoder.pull()[0]
            changes = loop.heard(audio, at, None)
            at += audio.shape[-1]
            if changes:
                performance.apply(changes)
            status = loop.active[(0, vector.concept)].status()
            trace.append((at / handle.sample_rate, float(status["setpoint"] or np.nan),
                          np.nan if status["measured"] is None else float(status["measured"]),
                          performance.current[vector.concept]))
    target_response(trace, out / f"{vector.concept}_target_step.png",
                    title=f"{vector.concept} target {setpoints[0]:g} -> {setpoints[1]:g} BPM (closed loop)")
    final = [m for t, s, m, _ in trace if t >= seconds * 0.75 and np.isfinite(m)]
    return {"setpoints": list(setpoints), "seconds": seconds,
            "final_measured_bpm": None if not final else round(float(np.median(final)), 1),
            "alpha_end": round(trace[-1][3], 3)}
