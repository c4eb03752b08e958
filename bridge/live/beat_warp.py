"""Beat warp: the generated audio cut at its beats and each slice laid on the host's grid.

What a DAW's "Beats" warp mode does to an audio clip, done on a stream: the audio is cut
just before each onset, and each slice starts on a pulse line (an eighth note) of the
clock's grid at the output. A slice longer than its place on the grid is cut short, with a
short fade; a shorter one is held, its last few milliseconds looped with crossfades. So
every beat the model plays is heard on the host's beat, whatever the model's own timing,
and pitch is never touched (no resampling, no phase vocoder).

It is the tempo lock's phase stage (``serve --tempo-lock --beat-warp``, ``/sync/lock/warp``):
steering (``target_loop.py``) brings the model's own tempo near the host's, so that slices
need little cutting or holding; the warp puts each beat on the grid. Where the model cannot
reach the host's tempo the warp still lays its beats on the grid, one slice per pulse the
model plays (more cutting or holding, and the engine generates faster or slower than real
time to feed it).

A slice's end is known when the next onset has been heard, plus ``CONFIRM_S`` of audio after
it. Until then the warp plays the slice as it is, as far as the shortest place on the grid
it can take (and short of the last ``margin_s``, where an onset may still be found); a
slice to be cut short then waits there for the next onset to be generated (the engine's
ring carries that wait: ``TargetLoop.reserve_s``). Where no onset comes for ``MAX_HOLD_S``
(a pause, a pad), the audio plays on unwarped and the next onset starts afresh on the grid.

Engine thread only (``AudioPath.push``, its one caller). Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .sensors import HOP_S, MAX_BPM, onset_envelope, pulse_reading

if TYPE_CHECKING:
    from ..clock.grid import Grid

#: Audio held at most while waiting for the next onset (seconds); past it, it plays as it is.
MAX_HOLD_S = 0.8
#: An onset counts once this much audio after it has been heard (its peak is then past).
CONFIRM_S = 0.04
#: A slice starts this far before its hit's attack: the attack is kept whole.
LEAD_S = 0.003
#: A slice this near its place on the grid (seconds) is left whole.
TRANSPARENT_S = 0.002
#: Where an attack is looked for around the onset envelope's estimate (before, after; seconds).
ATTACK_SEARCH_S = (0.016, 0.024)
#: Fades where a slice is cut short and where a held slice's loop repeats (seconds).
FADE_S = 0.004
#: The next slice's fade-in (seconds): over before its attack (LEAD_S after its start).
FADE_IN_S = 0.002
#: A held slice loops its end, one period long: the period is looked for between these
#: (seconds), matching the last LOOP_MATCH_S.
LOOP_MIN_S, LOOP_MAX_S, LOOP_MATCH_S = 0.008, 0.04, 0.01
#: The model's own tempo is read over the last HISTORY_S of its audio, once MIN_HISTORY_S is
#: heard, every TEMPO_EVERY_S of audio.
HISTORY_S, MIN_HISTORY_S, TEMPO_EVERY_S = 3.0, 1.2, 0.5
#: An onset is a peak of the onset envelope above this share of the strongest of late.
RELATIVE = 0.35
#: ... and above this many times the envelope's median: a steady sound's flux is no onset.
PROMINENCE = 4.0
#: ... and above this at all (the envelope's own units): a held tone's flux is rounding noise.
MIN_FLUX = 1.0
#: How fast "the strongest of late" forgets a loud hit (per second of audio).
PEAK_DECAY_PER_S = 0.5
#: Ring samples between where the warp's audio ended and where the next lands that mean a
#: gap (the engine fed the ring silence); below it, a resampler's rounding.
GAP_SAMPLES = 64
#: A slice is never squeezed below this share of its own length: it takes one more pulse.
MIN_STRETCH = 0.5


@dataclass(frozen=True)
class Pulses:
    """The host's pulse lines at the output, in ring samples: ``index_at(sample)`` is the
    (fractional) pulse index at a ring sample, ``sample_of(index)`` the ring sample of one."""

    index_at: Callable[[float], float]
    sample_of: Callable[[float], float]

    @classmethod
    def of_grid(cls, grid: Grid, pulses_per_beat: int = 2) -> Pulses:
        """A clock grid's (``bridge.clock.grid.Grid``) eighths (``pulses_per_beat`` 2)."""
        return cls(lambda s: float(grid.beat_at(round(s))) * pulses_per_beat,
                   lambda i: float(grid.sample_of(i / pulses_per_beat)))


class BeatWarp:
    """Streaming beat slicing at the model's rate. ``process`` takes each generated block
    and returns what can be placed so far; ``reset`` drops what it holds (a stop, a jump)."""

    def __init__(self, rate: int, ring_ratio: float) -> None:
        self.rate = rate
        self.ratio = ring_ratio  # ring samples per model sample
        self.min_gap = max(1, round(0.5 * 60.0 / MAX_BPM / 2 * rate))  # half the fastest eighth
        # The model's own tempo outlives a reset: a stop does not change how the model plays.
        self._heard = np.zeros(0, np.float32)  # the last HISTORY_S of the model's audio (mono): its tempo
        self.model_bpm = math.nan  # the model's own tempo, as the warp last read it
        self._unread = 0  # samples heard since it was read
        self.reset()

    def reset(self) -> None:
        """Drop the slice in hand and what is held (a stop, the warp turned off)."""
        self._held = np.zeros((0, 0), np.float32)  # [channels, n]: the current slice's audio, from its start
        self._emitted = 0  # of it, the samples already played as they are (its end is not known yet)
        self._on_onset = False  # whether the held audio starts with a slice's onset
        self._fade_in = False  # whether the slice in hand starts where the one before was cut or held
        self._at: float | None = None  # the ring sample the next emitted sample lands on
        self._peak = 0.0
        self.slices = 0
        self.passed = 0  # stretches played unwarped (no onset within MAX_HOLD_S)
        self.stretch = math.nan  # the last slice's length on the grid over its own

    @property
    def held_samples(self) -> int:
        """Samples given to the warp that it has not played yet."""
        return int(self._held.shape[-1]) - self._emitted

    @property
    def margin_s(self) -> float:
        """Audio past an onset the warp waits for before it places the slice that ends there."""
        return CONFIRM_S + LEAD_S + 4 * HOP_S

    def flush(self) -> np.ndarray:
        """What is held, as it is (the warp turned off or stopped); nothing is held after."""
        out, self._held, self._emitted = self._held[:, self._emitted:], self._held[:, :0], 0
        self._on_onset = False
        return out

    def process(self, audio: np.ndarray, at: float, pulses: Pulses, host_bpm: float) -> np.ndarray:
        """``audio`` [channels, n] at the model rate; ``at`` the ring sample this call's first
        emitted sample lands on; ``host_bpm`` the clock's tempo (until the model's own is read,
        its eighth says which onsets are too near to start a slice); the placed audio. Where ``at`` is not where the
        warp's last sample ended (the ring was fed silence: a stop), what it held is dropped:
        it was to play before the gap."""
        audio = np.asarray(audio, np.float32)
        self.follows(at)
        if self._at is None or self._held.shape[0] != audio.shape[0]:
            self._held = np.zeros((audio.shape[0], 0), np.float32)
            self._at = float(at)
        self._held = np.concatenate([self._held, audio], axis=1)
        self._heard = np.concatenate([self._heard, audio.mean(axis=0)])[-round(HISTORY_S * self.rate):]
        self._peak *= PEAK_DECAY_PER_S ** (audio.shape[-1] / self.rate)
        self._read_tempo(host_bpm, audio.shape[-1])
        # Until the model's tempo is read (its first MIN_HISTORY_S), each slice is taken to be
        # one of its eighths, and the host's eighth says what is too near to be one.
        known = math.isfinite(self.model_bpm)
        eighth = 30.0 / (self.model_bpm if known else host_bpm) * self.rate
        out: list[np.ndarray] = []
        while True:
            cuts = self._cuts()
            if not self._on_onset and cuts:  # the first onset: what comes before it ends on a pulse line
                out.append(self._place(cuts[0], pulses, 0))
                self._on_onset = True
                continue
            # The next cut a whole eighth of the model's on, or more: an onset nearer than half
            # an eighth (a note changing between two hits) stays inside the slice.
            cuts = [c for c in cuts if c >= 0.5 * eighth]
            if self._on_onset and cuts:
                out.append(self._place(cuts[0], pulses, max(1, round(cuts[0] / eighth)) if known else 1))
                continue
            keep = round(self.margin_s * self.rate)  # where an onset may still be found
            if self._on_onset and self._held.shape[-1] > MAX_HOLD_S * self.rate:  # no onset in sight: play it as it is
                end = self._held.shape[-1] - keep
                out.append(self._take(end, end))
                self._on_onset, self.passed = False, self.passed + 1
                continue
            out.append(self._ahead(pulses, eighth, keep, known))
            break
        return np.concatenate(out, axis=1) if out else np.zeros((audio.shape[0], 0), np.float32)

    def follows(self, at: float) -> bool:
        """Where ``at`` (the ring sample the next sample lands on) is not where the warp's last
        one ended, the ring was fed silence in between (a stop): what the warp held was to
        play before the gap, and is dropped. Whether it was."""
        if self._at is not None and abs(at - self._at) > GAP_SAMPLES:
            self.reset()
            return True
        return False

    def _read_tempo(self, host_bpm: float, new: int) -> None:
        self._unread += new
        if self._unread >= TEMPO_EVERY_S * self.rate and len(self._heard) >= MIN_HISTORY_S * self.rate:
            self._unread = 0
            bpm = pulse_reading(self._heard, self.rate, host_bpm).bpm
            if math.isfinite(bpm):
                self.model_bpm = bpm

    def _cuts(self) -> list[int]:
        """Where slices may start in the held audio (samples from its start): confirmed onsets,
        past its first onset's own."""
        env, period = onset_envelope(self._held.mean(axis=0), self.rate)  # 8 ms frames: where to look
        if len(env) < 3:
            return []
        hop = period * self.rate
        self._peak = max(self._peak, float(env.max()))
        floor = max(RELATIVE * self._peak, PROMINENCE * float(np.median(env)), MIN_FLUX)
        peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > floor)) + 1
        # The flux frame i compares the windows at (i - 1) and i hops: the onset is near i + 2 hops.
        mono = self._held.mean(axis=0)
        times = [attack(mono, (p + 2) * hop, self.rate) - LEAD_S * self.rate for p in peaks]
        confirm, start = (CONFIRM_S + LEAD_S) * self.rate, self.min_gap if self._on_onset else 0
        return [round(t) for t in times if t >= start and t + confirm <= self._held.shape[-1]]

    def _start(self) -> float:
        """The ring sample the current slice (or lead-in) started on."""
        assert self._at is not None
        return self._at - self._emitted * self.ratio

    def _length(self, pulses: Pulses, pulses_spanned: int) -> float:
        """The current slice's length on the grid (model samples) if it spans ``pulses_spanned``."""
        lead = LEAD_S * self.rate * self.ratio  # a slice starts that far before its pulse line
        start = self._start()
        target = round(pulses.index_at(start + lead)) + pulses_spanned
        return (pulses.sample_of(target) - lead - start) / self.ratio

    def _ahead(self, pulses: Pulses, eighth: float, keep: int, known: bool) -> np.ndarray:
        """Play what is surely before the slice's end now, as it is: the held audio short of
        the last ``keep`` samples (an onset may still be found there), and, in a slice, short
        of its shortest place on the grid (the pulses it spans at least, less the fade). So
        the warp holds back only what it must, not the whole slice."""
        end = self._held.shape[-1] - keep
        if self._on_onset:
            least = max(1, round((end - CONFIRM_S * self.rate) / eighth)) if known else 1
            end = min(end, math.floor(self._length(pulses, least)) - round(FADE_S * self.rate) - 1)
        if end <= self._emitted:
            return self._held[:, :0]
        out = self._faded_in(self._held[:, self._emitted:end].copy())
        assert self._at is not None
        self._at += out.shape[-1] * self.ratio
        self._emitted = end
        return out

    def _place(self, cut: int, pulses: Pulses, pulses_spanned: int) -> np.ndarray:
        """The held audio up to ``cut``, fitted to end on a pulse line ``pulses_spanned`` after
        the one it starts on (0: the lead-in before the first onset, ending on the next pulse
        line after where it falls); that audio is consumed, less what was played ahead."""
        assert self._at is not None
        cut = max(cut, self._emitted)
        if pulses_spanned == 0:  # held, never cut: nothing before the first onset is lost
            lead = LEAD_S * self.rate * self.ratio
            target = math.ceil(pulses.index_at(self._at + lead + (cut - self._emitted) * self.ratio) - 1e-6)
            length = (pulses.sample_of(target) - lead - self._start()) / self.ratio
        else:
            length = self._length(pulses, pulses_spanned)
            while length < MIN_STRETCH * cut:  # too fast for the host: one pulse more
                pulses_spanned += 1
                length = self._length(pulses, pulses_spanned)
        # Within TRANSPARENT_S of its place the slice plays whole: no fade for an error nobody
        # hears, and the next slice's place is the grid's again (errors do not add up).
        length = cut if abs(length - cut) <= TRANSPARENT_S * self.rate else max(self._emitted, round(length))
        self.stretch = length / max(1, cut)
        self.slices += 1 if pulses_spanned else 0
        return self._take(cut, length)

    def _take(self, n: int, length: int) -> np.ndarray:
        """The first ``n`` held samples as ``length`` samples (cut with a fade, or held), less
        those already played ahead; consumed."""
        x, self._held = self._held[:, :n].copy(), self._held[:, n:]
        loop = loop_length(x, self.rate) if length > x.shape[-1] else 0
        y = self._faded_in(fit(x, length, round(FADE_S * self.rate), loop)[:, self._emitted:])
        assert self._at is not None
        self._at += y.shape[-1] * self.ratio
        self._emitted = 0
        self._fade_in = length != n  # fit faded this one out: the next one fades in
        return y

    def _faded_in(self, y: np.ndarray) -> np.ndarray:
        """The slice's first samples faded in, where the slice before was cut or held (its
        end faded to silence) and none of this one has played yet."""
        if self._fade_in and self._emitted == 0 and y.shape[-1]:
            n = min(y.shape[-1], round(FADE_IN_S * self.rate))
            y[:, :n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
            self._fade_in = False
        return y


def attack(mono: np.ndarray, near: float, rate: int) -> float:
    """The sample an attack starts at, near ``near`` (an onset envelope's estimate, good to a
    frame or two): the start of the 1 ms block, within ATTACK_SEARCH_S of it, over which the
    level rises most (in dB), so a slice's cut lies a fixed LEAD_S before the hit itself."""
    block = max(1, round(0.001 * rate))
    lo = max(0, int(near - ATTACK_SEARCH_S[0] * rate))
    hi = min(len(mono), int(near + ATTACK_SEARCH_S[1] * rate))
    n = (hi - lo) // block
    if n < 3:
        return near
    level = 10 * np.log10((mono[lo:lo + n * block].reshape(n, block) ** 2).mean(axis=1) + 1e-10)
    rise = np.diff(level)
    return float(lo + (int(np.argmax(rise)) + 1) * block)


def loop_length(x: np.ndarray, rate: int) -> int:
    """The length of ``x``'s end that loops most seamlessly: the lag, between LOOP_MIN_S and
    LOOP_MAX_S, at which its last LOOP_MATCH_S best matches what came one lag before (the
    period of a held note or of a steady texture)."""
    mono = x.mean(axis=0) if x.ndim == 2 else x
    match, lo, hi = (round(s * rate) for s in (LOOP_MATCH_S, LOOP_MIN_S, LOOP_MAX_S))
    if len(mono) < hi + match:
        return max(1, len(mono) // 2)
    tail = mono[-match:]
    lags = np.arange(lo, hi + 1)
    # before[i] is the match-long stretch that ends lags[i] samples before the end
    windows = np.lib.stride_tricks.sliding_window_view(mono[len(mono) - match - hi:len(mono) - lo], match)
    before = windows[::-1]  # lag lo first
    score = before @ tail / (np.linalg.norm(before, axis=1) * np.linalg.norm(tail) + 1e-12)
    return int(lags[int(np.argmax(score))])


def fit(x: np.ndarray, length: int, fade: int, loop: int) -> np.ndarray:
    """``x`` [channels, n] as ``length`` samples: cut short with a fade-out, or held by
    looping its last ``loop`` samples (crossfaded over ``fade``) and faded out at the end.
    A slice of its own length is left untouched (the stream plays on, seamless)."""
    n = x.shape[-1]
    if length == n:
        return x
    if n == 0:
        return np.zeros((x.shape[0], length), np.float32)
    if length < n:
        y = x[:, :length].copy()
    else:
        loop = max(1, min(loop, n // 2))
        fade = min(fade, loop // 2)
        seg = x[:, n - loop:]
        parts, have = [x.copy()], n
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32) if fade else None
        while have < length:
            piece = seg.copy()
            if ramp is not None:  # crossfade the loop's start into what came before it
                prev = parts[-1]
                prev[:, -fade:] = prev[:, -fade:] * (1 - ramp) + piece[:, :fade] * ramp
                piece = piece[:, fade:]
            parts.append(piece)
            have += piece.shape[-1]
        y = np.concatenate(parts, axis=1)[:, :length].copy()
    f = min(fade, y.shape[-1])
    if f:
        y[:, -f:] *= np.linspace(1.0, 0.0, f, dtype=np.float32)
    return y


def warp_status(warp: BeatWarp | None, on: bool) -> dict[str, Any]:
    """The warp's state for ``/status/json``."""
    if warp is None or not on:
        return {"on": False}
    return {"on": True, "slices": warp.slices, "passed": warp.passed,
            "model_bpm": None if not math.isfinite(warp.model_bpm) else round(warp.model_bpm, 1),
            "stretch": None if not math.isfinite(warp.stretch) else round(warp.stretch, 3),
            "held_ms": round(warp.held_samples / warp.rate * 1000, 1)}


__all__ = ["BeatWarp", "Pulses", "fit", "warp_status"]
