"""One output stream's audio path: model-rate PCM -> its stage (the tempo lock's beat warp,
when one is set) -> the output's rate and channel count -> effect chain -> limiter ceiling
-> ring buffer (+ recorder).

Runs on the engine thread (``push``; ``flush`` after it has stopped); the output reads
the ring on its own thread. One ``AudioPath`` per output stream, each shaped by its
output's format (``for_output``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pedalboard
from pedalboard.io import StreamResampler

from .chains import ceiling, enforce_ceiling
from .outputs import Output
from .recorder import WavRecorder
from .ring import Ring

#: Audio the ring can hold, in seconds at the output's rate: room for the goal and a re-prime's top-up.
RING_SECONDS = 2
#: And room for what a stage may write at once beyond its block (the beat warp: a slice held
#: up to MAX_HOLD_S and placed whole, or a lead-in held to the next pulse line).
STAGE_HEADROOM_S = 2

#: A path stage: a model-rate block [channels, n] and the ring sample its next placed sample
#: lands on -> the block to play now, and how many samples before it the stage still holds.
Stage = Callable[[np.ndarray, int], tuple[np.ndarray, int]]


class AudioPath:
    """Model-rate PCM -> the output's rate and channels -> effect chain -> ring buffer (+ recorder)."""

    def __init__(self, model_rate: int, device_rate: int, ring: Ring, chain: pedalboard.Pedalboard,
                 recorder: WavRecorder | None = None) -> None:
        self.model_rate = model_rate
        self.device_rate = device_rate
        self.ring = ring
        self.chain = chain
        self.ceiling = ceiling(chain)
        self.recorder = recorder
        self.ratio = device_rate / model_rate
        self.resampler = StreamResampler(model_rate, device_rate, ring.channels)
        # The resampler holds back this many output samples: where a pushed block's first
        # sample lands in the ring, behind what it emits now.
        self.delay = round(self.resampler.input_latency * self.ratio)
        self._gain_ramp: np.ndarray | None = None
        self._pushed = False  # pedalboard's resampler cannot flush before its first block
        self.stage: Stage | None = None  # serve sets the tempo lock's beat warp here
        self.reserve_s: Callable[[], float] = lambda: 0.0  # what the stage wants the ring to hold beyond its goal
        self.stage_rest: Callable[[], np.ndarray] | None = None  # what the stage still holds, at the set's end

    @property
    def reserve(self) -> int:
        """Ring samples the engine keeps beyond its goal for the stage (0 without one)."""
        return round(self.reserve_s() * self.device_rate)

    @property
    def headroom(self) -> int:
        """Ring samples kept free of any goal for a stage's largest write (0 without one)."""
        return STAGE_HEADROOM_S * self.device_rate if self.stage is not None else 0

    @classmethod
    def for_output(cls, output: Output, model_rate: int, chain: pedalboard.Pedalboard,
                   record: str | Path | None = None) -> AudioPath:
        """The path to ``output``: its ring (and the recording, when ``record`` names a
        file) at the output's sample rate and channel count."""
        ring = Ring(capacity=(RING_SECONDS + STAGE_HEADROOM_S) * output.sample_rate, channels=output.channels)
        recorder = WavRecorder(record, output.sample_rate, output.channels) if record else None
        return cls(model_rate, output.sample_rate, ring, chain, recorder)

    def fade(self, up: bool, ms: float, after: int = 0) -> None:
        """A fade over ``ms`` from the next sample emitted, or ``after`` samples later
        (silent until then: a fade-in that starts on an exact ring sample)."""
        n = max(1, int(self.device_rate * ms / 1000))
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        ramp = ramp if up else ramp[::-1].copy()
        self._gain_ramp = np.concatenate([np.zeros(after, np.float32), ramp]) if after else ramp

    def fade_out_now(self, ms: float) -> None:
        """Stop at once: what the ring holds unplayed fades out over ``ms`` and the rest is
        silent (in the recording too), and everything emitted after stays silent until a
        fade-in. A stop is then heard within the fade, not after the buffered audio."""
        _, faded = self.ring.fade_unread(max(1, int(self.device_rate * ms / 1000)))
        if self.recorder is not None:
            self.recorder.rewrite_tail(faded)
        self._gain_ramp = np.zeros(1, np.float32)

    def silence(self, n: int) -> None:
        """``n`` samples of silence straight into the ring (and the recording), past the
        chain: while the transport is stopped the ring's counters keep pace with the output."""
        block = np.zeros((n, self.ring.channels), np.float32)
        self.ring.write(block)
        if self.recorder is not None:
            self.recorder.write(block)

    def push(self, audio: np.ndarray) -> int:
        """audio [channels, n] at the model rate. Returns the ring counter at which its
        first sample will be (the resampler delays it by ``delay`` samples; a stage that
        holds samples back, by those too)."""
        held = 0
        if self.stage is not None:
            audio, held = self.stage(audio, self.ring.written + self.delay)
        channels = self.ring.channels
        if audio.shape[0] != channels:  # a mono model on a stereo output (or the other way): one mix on every side
            mix = audio[:1] if audio.shape[0] == 1 else audio.mean(axis=0, keepdims=True)
            audio = np.repeat(mix, channels, axis=0)
        out = self.resampler.process(np.ascontiguousarray(audio, dtype=np.float32))
        self._pushed = True
        return self._emit(out) + self.delay + round(held * self.ratio)

    def flush(self) -> None:
        """Whatever the stage and the resampler still hold, out through the chain (at the end of a set)."""
        rest = self.stage_rest() if self.stage_rest is not None else None
        if rest is not None and rest.shape[-1]:
            stage, self.stage = self.stage, None  # as it is: the set is over
            self.push(rest)
            self.stage = stage
        if self._pushed:
            self._emit(self.resampler.process(None))

    def _emit(self, out: np.ndarray) -> int:
        if out.shape[1]:
            out = self.chain.process(out, self.device_rate, reset=False)
        block = enforce_ceiling(np.ascontiguousarray(out.T), self.ceiling)  # the limiter alone overshoots
        ramp = self._gain_ramp
        if ramp is not None and block.shape[0]:
            n = min(len(ramp), block.shape[0])
            block[:n] *= ramp[:n, None]
            tail = ramp[n:]
            if ramp[-1] == 0.0:  # faded out: the rest stays silent until a fade-in
                block[n:] = 0.0
                self._gain_ramp = tail if len(tail) else np.zeros(1, np.float32)
            else:
                self._gain_ramp = tail if len(tail) else None
        start = self.ring.write(block)
        if self.recorder is not None and block.shape[0]:
            self.recorder.write(block)
        return start
