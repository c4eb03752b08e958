"""Offline rendering: the streaming engine run to a fixed length, with fixed knobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from steering_core.codec.streaming import decode
from steering_core.errors import UnknownConceptError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import FrameCallback, MusicStream
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.static_step import CudaGraphsMode, open_stream


def render(handle: MusicGenHandle, prompt: str, seconds: float, *, seed: int = 0,
           vectors: Sequence[SteeringVector] = (), alphas: Mapping[str, float] | None = None,
           settings: SamplingSettings | None = None, on_frame: FrameCallback | None = None,
           steerer: Steerer | None = None, cuda_graphs: CudaGraphsMode | None = None) -> np.ndarray:
    """Audio [channels, samples] for ``seconds`` of ``prompt`` with each concept at its alpha.

    With no vectors the model runs unhooked; with vectors at alpha 0 the result is
    bit-identical to that (the operators are exact identities at 0).
    """
    alphas = dict(alphas or {})
    if steerer is None and vectors:
        steerer = Steerer(handle)
        for v in vectors:
            steerer.add(v, alpha=alphas.pop(v.concept, 0.0))
    if alphas:
        raise UnknownConceptError(f"no vector loaded for {', '.join(sorted(alphas))}")
    frames = max(1, round(seconds * handle.frame_rate))
    if cuda_graphs is None:  # today's loop
        stream = MusicStream(handle, prompt, seed=seed, settings=settings, steerer=steerer)
    else:  # the static step (same tokens), unless its steering cannot apply the concepts
        stream = open_stream(handle, prompt, cuda_graphs=cuda_graphs, seed=seed, settings=settings, steerer=steerer)
    with stream.steering():
        codes = stream.generate_frames(frames, on_frame=on_frame)
    return decode(handle, codes)[0]
