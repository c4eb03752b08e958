"""The audio path of a set of stems: each stem through its own chain, into its own
channel pair of one ring, with the mix in front.

``StemMix`` keeps ``AudioPath``'s interface (the engine drives either), and takes the
codec's whole batch ``[stems, channels, n]`` at the model rate. Each stem is resampled to
the output's rate, run through its own effect chain and ceiling, and scaled by its
mute/solo gain (ramped over a block, so a mute never clicks); the mix is their sum
through a limiter at the ceiling. One ring holds it all, ``[mix L, mix R, stem 1 L,
stem 1 R, ...]``: the JACK output plays every pair on its own ports
(``steerbridge:out_L/R`` and ``steerbridge:<name>_L/_R``), a sound card as many pairs
as it is opened with (``device_channels.py``), the clock the mix (the first pair). One
ring and one writer keep every stem on the same sample counter, so stems start, stop
and land on the bar together.

Recordings: the mix to ``--record``'s file and each stem to its own file beside it
(``<file>.<name>.wav``), each valid at every moment as today's recording is; a stem's
recording holds what its ports carried (its mute included).

A stem whose chain raises is that stem's fault: it is silent from then on (its error in
``/status/json``), and the others play on.

Runs on the engine thread (``push``), as ``AudioPath`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pedalboard
from pedalboard.io import StreamResampler

from steering_core.stream.timeline import AUDIO_ONLY_KINDS, Change

from .audio_path import RING_SECONDS
from .chains import DEFAULT_CEILING_DB, ceiling, enforce_ceiling
from .recorder import WavRecorder
from .ring import Ring

log = logging.getLogger("steerbridge.audio")

STEREO = 2


@dataclass
class StemVoice:
    """One stem's part of the path: its chain, ceiling, gain and recording."""

    name: str
    chain: pedalboard.Pedalboard
    resampler: StreamResampler
    recorder: WavRecorder | None = None
    gain: float = 1.0  # as last played (the end of the previous block's ramp)
    fault: str | None = None
    #: False: a spare row (silent, unrecorded) until /stem/add gives it a stem (``stem_live``).
    active: bool = True
    enter_at: int | None = None  # the ring sample its first sound may have (its bar line)
    leaving: bool = False  # removed: silent from the next block, its recording closed after it
    #: The ring sample its recording's first sample is (a stem added while playing starts its file then).
    recorded_from: int = 0
    peak: float = field(init=False)

    def __post_init__(self) -> None:
        self.peak = ceiling(self.chain)


def stem_recording(record: str | Path, name: str) -> Path:
    """Where a stem's recording goes beside the mix's: ``set.wav`` -> ``set.drums.wav``."""
    path = Path(record)
    return path.with_name(f"{path.stem}.{name}{path.suffix}")


class StemMix:
    """The stems' audio path into one ring (see the module doc)."""

    takes_batch = True  # the engine hands it every row of the codec's output
    reserve = headroom = 0  # no stage holds audio back on a set of stems (the beat warp plays on one stream)

    def __init__(self, model_rate: int, device_rate: int, names: Sequence[str], chains: Sequence[pedalboard.Pedalboard],
                 record: str | Path | None = None, spares: int = 0) -> None:
        self.model_rate = model_rate
        self.device_rate = device_rate
        self.ratio = device_rate / model_rate
        self.ring = Ring(capacity=RING_SECONDS * device_rate, channels=STEREO * (1 + len(names)))
        self.recorder = WavRecorder(record, device_rate, STEREO) if record else None
        self.record = record
        self.voices = [StemVoice(name, chain, StreamResampler(model_rate, device_rate, STEREO),
                                 WavRecorder(stem_recording(record, name), device_rate, STEREO, starts_at=0,
                                             description=f"steerbridge stem {name}")
                                 if record and i < len(names) - spares else None, active=i < len(names) - spares)
                       for i, (name, chain) in enumerate(zip(names, chains, strict=True))]
        #: (row, True) -> the stem that enters the row (name, chain); (row, False) -> None, its stem
        #: leaves. Set by the control thread before the change that makes it so (an unmute, a mute),
        #: taken here when that change is applied: a remove and an add of one row never mix up.
        self.pending: dict[tuple[int, bool], tuple[str, pedalboard.Pedalboard] | None] = {}
        self.delay = round(self.voices[0].resampler.input_latency * self.ratio)
        self.mute = [False] * len(names)
        self.solo = [False] * len(names)
        self.limiter = pedalboard.Pedalboard([pedalboard.Limiter(threshold_db=DEFAULT_CEILING_DB)])
        self.mix_peak = ceiling(self.limiter)
        self._gain_ramp: np.ndarray | None = None
        self._pushed = False

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.voices]

    def set_flag(self, kind: str, row: int, on: bool) -> None:
        """A stem's mute or solo, heard from the next block (ramped over it)."""
        (self.mute if kind == "mute" else self.solo)[row] = on

    def applied(self, changes: Sequence[Change], sample: int | None) -> None:
        """The engine applied ``changes`` (their first frame sounds from ring sample ``sample``):
        a stem's mute or solo, and a stem entering (on its bar line) or leaving a row."""
        for c in changes:
            if c.kind not in AUDIO_ONLY_KINDS or c.stream is None:
                continue
            self.set_flag(c.kind, c.stream, bool(c.value))
            key = (c.stream, not c.value)
            if c.kind == "mute" and key in self.pending:
                self._enter_or_leave(c.stream, self.pending.pop(key), sample)

    def _enter_or_leave(self, row: int, entering: tuple[str, pedalboard.Pedalboard] | None, sample: int | None) -> None:
        voice = self.voices[row]
        if entering is None:
            voice.leaving = True
            return
        name, chain = entering
        if voice.recorder is not None:
            voice.recorder.close()
        recorder = WavRecorder(stem_recording(self.record, name), self.device_rate, STEREO, starts_at=self.ring.written,
                               description=f"steerbridge stem {name}") if self.record else None
        self.voices[row] = replace(voice, name=name, chain=chain, recorder=recorder, gain=1.0, fault=None, active=True,
                                   enter_at=sample, leaving=False, recorded_from=self.ring.written)

    def _gains(self) -> list[float]:
        soloing = any(self.solo[i] for i, v in enumerate(self.voices) if v.active)
        return [0.0 if v.fault is not None or not v.active or v.leaving or self.mute[i]
                or (soloing and not self.solo[i]) else 1.0 for i, v in enumerate(self.voices)]

    # --- AudioPath's interface --------------------------------------------------------
    def fade(self, up: bool, ms: float, after: int = 0) -> None:
        n = max(1, int(self.device_rate * ms / 1000))
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        ramp = ramp if up else ramp[::-1].copy()
        self._gain_ramp = np.concatenate([np.zeros(after, np.float32), ramp]) if after else ramp

    def fade_out_now(self, ms: float) -> None:
        _, faded = self.ring.fade_unread(max(1, int(self.device_rate * ms / 1000)))
        for recorder, cols in self._recorders():
            recorder.rewrite_tail(faded[:, cols])
        self._gain_ramp = np.zeros(1, np.float32)

    def silence(self, n: int) -> None:
        block = np.zeros((n, self.ring.channels), np.float32)
        self.ring.write(block)
        for recorder, cols in self._recorders():
            recorder.write(block[:, cols])

    def push(self, audio: np.ndarray) -> int:
        """audio [stems, channels, n] at the model rate; returns the ring counter of its first sample."""
        outs = []
        for voice, rows in zip(self.voices, audio, strict=True):
            stereo = rows if rows.shape[0] == STEREO else np.repeat(rows[:1], STEREO, axis=0)
            outs.append(voice.resampler.process(np.ascontiguousarray(stereo, dtype=np.float32)))
        self._pushed = True
        return self._emit(outs) + self.delay

    def flush(self) -> None:
        if self._pushed:
            self._emit([v.resampler.process(None) for v in self.voices])

    # --- internals ----------------------------------------------------------------------
    def _recorders(self) -> list[tuple[WavRecorder, slice]]:
        out = [] if self.recorder is None else [(self.recorder, slice(0, STEREO))]
        for i, voice in enumerate(self.voices):
            if voice.recorder is not None:
                out.append((voice.recorder, slice(STEREO * (i + 1), STEREO * (i + 2))))
        return out

    def _emit(self, outs: list[np.ndarray]) -> int:
        n = min(o.shape[1] for o in outs)
        block = np.zeros((n, self.ring.channels), np.float32)
        gains = self._gains()
        first = self.ring.written
        for i, (voice, out) in enumerate(zip(self.voices, outs, strict=True)):
            if not voice.active:  # a spare row plays nothing (its resampler runs on, in step with the others)
                continue
            part = self._through_chain(voice, out[:, :n]) if n else np.zeros((STEREO, 0), np.float32)
            stem = enforce_ceiling(np.ascontiguousarray(part.T), voice.peak)
            if voice.enter_at is not None:  # a stem added while playing: silent before its bar line
                stem[:max(0, min(n, voice.enter_at - first))] = 0.0
                voice.enter_at = None if voice.enter_at <= first + n else voice.enter_at
            target = gains[i] if voice.fault is None else 0.0
            if n and target != voice.gain:
                stem *= np.linspace(voice.gain, target, n, dtype=np.float32)[:, None]
            elif target != 1.0:
                stem *= np.float32(target)
            if n:
                voice.gain = target
            block[:, STEREO * (i + 1):STEREO * (i + 2)] = stem
            block[:, :STEREO] += stem
        if n:
            mixed = self.limiter.process(np.ascontiguousarray(block[:, :STEREO].T), self.device_rate, reset=False)
            block[:, :STEREO] = enforce_ceiling(np.ascontiguousarray(mixed.T), self.mix_peak)
        self._apply_fade(block)
        start = self.ring.write(block)
        if n:
            for recorder, cols in self._recorders():
                recorder.write(block[:, cols])
            for voice in self.voices:
                if voice.leaving and voice.gain == 0.0:  # faded out: the row is spare again
                    if voice.recorder is not None:
                        voice.recorder.close()
                    voice.recorder, voice.active, voice.leaving = None, False, False
        return start

    def _through_chain(self, voice: StemVoice, out: np.ndarray) -> np.ndarray:
        if voice.fault is not None:
            return np.zeros_like(out)
        try:
            return voice.chain.process(out, self.device_rate, reset=False)
        except Exception as exc:  # one stem's effect failed: that stem goes silent, the set plays on
            voice.fault = f"effect chain failed: {exc}"
            log.error("stem %s: %s; it is silent from now on, the others play on", voice.name, voice.fault)
            return np.zeros_like(out)

    def _apply_fade(self, block: np.ndarray) -> None:
        ramp = self._gain_ramp
        if ramp is None or not block.shape[0]:
            return
        n = min(len(ramp), block.shape[0])
        block[:n] *= ramp[:n, None]
        tail = ramp[n:]
        if ramp[-1] == 0.0:
            block[n:] = 0.0
            self._gain_ramp = tail if len(tail) else np.zeros(1, np.float32)
        else:
            self._gain_ramp = tail if len(tail) else None

    def close(self) -> None:
        for recorder, _ in self._recorders():
            recorder.close()
