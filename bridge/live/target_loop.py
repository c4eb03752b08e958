"""Target knobs and the tempo lock, on the engine thread: sensors read, PI sets alpha.

The engine hands every chunk of audio it generated (not yet played) to ``TargetLoop.heard``
with the ring sample it starts at; once per ``every_beats`` of audio a concept with a
target reads its sensor (``sensors.py``) over the last few beats and its controller
(``steering_core.steer.controller``) answers an alpha. That alpha goes back to the engine
as an ordinary alpha ``Change``, applied at the next step through the timeline's smoothing
like a knob, and logged with the loop's state: the log holds the alpha played, so a
replay needs no sensor and stays bit-identical.

On a new setpoint (and when the lock starts, at the host's tempo) a concept whose vector
has a calibration that can be read backwards (``steering_core.steer.feedforward``) jumps
to the calibrated alpha for it at once (``ask`` returns that change), so the PI only trims.

With the tempo lock on, the tempo target is the host's: the clock's tempo, pulled by the
beat-phase error of the audio's onsets against the clock's grid at the output (a
phase-locked loop, ``controller.locked_setpoint``). With the beat warp on as well
(``beat_warp.py``, ``/sync/lock/warp 1``) the warp lays each beat on the clock's grid and
the loop steers the tempo alone, toward the host's: ``place`` is the one stream's path
stage (``AudioPath.stage``), run on each generated block before it is resampled. A tempo
target (a setpoint in BPM, no lock) warps the same way onto a grid of its own at its
setpoint (``warp_stage.py``): the knob's tempo is heard at once, while steering brings the
model's own tempo toward it so that slices need less cutting or holding.

Loops are keyed by (stream, concept): one controller per stream and concept. In a set of
stems each stem's loops read that stem's own audio (its row, before the mix), or its own
row's probe, and set that row's alpha; the tempo lock plays on the first stream only
(commands.py refuses it on a set of several stems). Owned by the engine thread (its one caller);
``status`` returns the frozen copy that thread publishes after every ask and update
(another thread never iterates the live loops).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from steering_core.steer.controller import LoopSettings, PIController, locked_setpoint
from steering_core.steer.feedforward import FeedForward
from steering_core.stream.probe_tap import ProbeTaps
from steering_core.stream.timeline import Change

from .beat_warp import BeatWarp, warp_status
from .probe_loop import ProbeTarget
from .sensors import MAX_BPM, centroid_reading, pulse_reading
from .target_units import LOCK_CONCEPT, UNITS, TargetUnit
from .warp_stage import WarpStage

if TYPE_CHECKING:
    from ..clock.clock import ClockSnapshot

log = logging.getLogger("steerbridge.targets")

#: Audio kept for the sensors (seconds), and how much of it the pulse sensor reads.
BUFFER_S = 4.0
PULSE_WINDOW_BEATS = 3.0
MIN_PULSE_WINDOW_S = 1.2
#: Alpha moves smaller than this are not sent (no change of the music, a log line each).
MIN_ALPHA_STEP = 0.01
#: The lock feeds forward again when the host's tempo moves this far from the last one fed.
LOCK_REFEED = 0.03
#: Locked: tempo within this fraction of the host's and beats within this of its grid.
LOCKED_TEMPO, LOCKED_PHASE_S = 0.03, 0.04
#: The beat a loop reads by without a clock.
NO_CLOCK_BPM = 120.0


@dataclass(frozen=True)
class TargetAsk:
    """What a target message asks: a setpoint (in the unit's own measure), off, or the lock."""

    concept: str
    setpoint: float | None = None  # None and lock None: back to a plain force knob
    lock: bool | None = None  # /sync/lock 1|0
    warp: bool | None = None  # /sync/lock/warp 1|0: the lock (or a tempo target) lays the beats on a grid (beat_warp.py)
    probe: bool | None = None  # True: the setpoint is a probability the concept's probe reads (probe_loop.py)
    stream: int | None = None  # the row (a stem) whose knob it is; None: the one stream's (row 0)
    alpha_range: tuple[float, float] | None = None  # that stem's own (None: the concept's)


@dataclass
class HeardAudio:
    """One stream's recent generated audio (mono, model rate) and the ring sample just past it."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    end: float | None = None


class ActiveTarget:
    def __init__(self, unit: TargetUnit, alpha_range: tuple[float, float], alpha: float,
                 setpoint: float | None) -> None:
        self.unit = unit
        self.setpoint = setpoint  # None: the host's tempo (the lock)
        # The pulse sensor reads PULSE_WINDOW_BEATS of audio (MIN_PULSE_WINDOW_S at least: more
        # beats at the fastest tempo), the centroid a beat: a reading after an alpha move still
        # hears the alpha before for that many updates.
        window = max(PULSE_WINDOW_BEATS, MIN_PULSE_WINDOW_S * MAX_BPM / 60.0) if unit.sensor == "pulse" else 1.0
        lag = math.ceil(window / unit.every_beats)
        self.controller = PIController(LoopSettings(alpha_range, unit.prior_slope, lag=lag), alpha)
        self.measured = math.nan
        self.phase_s = math.nan
        self.since = 0.0  # audio seconds heard since the last update
        self.aim = math.nan  # the setpoint the last update aimed at (the lock's pulled tempo)
        self.fed = math.nan  # the setpoint last fed forward (the lock: the host's tempo then)

    def status(self) -> dict[str, Any]:
        def r(x: float, n: int) -> float | None:
            return None if not math.isfinite(x) else round(x, n)
        return {"setpoint": None if self.setpoint is None else r(self.setpoint, 2), "aim": r(self.aim, 2),
                "unit": self.unit.unit, "measured": r(self.measured, 2), "phase_ms": r(self.phase_s * 1000, 1),
                **self.controller.status()}


class TargetLoop:
    """Every active target of one engine. Engine thread only (its owner)."""

    def __init__(self, concepts: Mapping[str, tuple[float, float]], model_rate: int, ring_ratio: float, *,
                 lock: bool = False, streams: int = 1, feedforward: Mapping[str, FeedForward] | None = None,
                 taps: ProbeTaps | None = None, warp: bool = False) -> None:
        self.concepts = dict(concepts)
        self.feedforward = dict(feedforward or {})
        self.rate = model_rate
        self.ratio = ring_ratio  # ring samples per model sample
        self.streams = streams  # rows heard: past one, each loop's change names its row
        self.active: dict[tuple[int, str], ActiveTarget] = {}
        # The stream's probe readings (probe_loop.py); None (a stream without taps): no probe targets.
        self.taps = taps
        self.probing: dict[tuple[int, str], ProbeTarget] = {}
        self._readings: list[dict[str, float]] = []  # the probes' last reading, per stream
        self._heard: dict[int, HeardAudio] = {}  # each stream's audio, for its sensors
        self._host_bpm = NO_CLOCK_BPM  # the clock's tempo as last heard: a centroid's window is its beat
        self.lock = False
        self._lock_state = "off"
        self._lock_asked = lock
        self.stage = WarpStage(model_rate, ring_ratio, warp)  # the lock, or a tempo target, warps (one stream)
        self._published: dict[str, Any] = {"lock": "off", "target_knobs": {}, "warp": warp_status(None, False)}
        self._pending: list[Change] = []  # feed-forward jumps asked since the last chunk

    # --- asks, from control events ---------------------------------------------------
    def ask(self, ask: TargetAsk, alpha_now: Mapping[str, float]) -> None:
        """Take a target message (``alpha_now``: its stream's alphas as played). A new
        setpoint's feed-forward alpha leaves with the next chunk's changes (``heard_rows``);
        the lock's waits for the clock's tempo there too."""
        stream = ask.stream or 0
        if ask.warp is not None:
            self.stage.asked = ask.warp
            log.info("beat warp %s", "on: while the tempo lock (or a tempo target) is on, each beat the model "
                     "plays is laid on the clock's grid (or one at the target's tempo)" if ask.warp
                     else "off: the model's own timing plays")
            self._publish()
            return
        if ask.lock is not None:
            self.lock = ask.lock and LOCK_CONCEPT in self.concepts
            key = (stream, LOCK_CONCEPT)
            if self.lock:
                self._start(key, None, alpha_now)
                self._lock_state = "acquiring"
            else:
                if key in self.active and self.active[key].setpoint is None:
                    del self.active[key]
                self._lock_state = "off"
            log.info("tempo lock %s%s", "on: tempo follows the clock's tempo and beat" if self.lock else "off",
                     "; the beat warp lays each beat on the clock's grid" if self.warping else "")
            self._publish()
            return
        key = (stream, ask.concept)
        if ask.setpoint is None:
            self._drop(key, "off")
        elif ask.probe:
            self._probe(key, ask.setpoint, alpha_now, ask.alpha_range)
        else:
            self._drop_probe(key, "a sensor target")
            self._start(key, ask.setpoint, alpha_now, ask.alpha_range)
            self._pending += self._feed_forward(key, ask.setpoint)
        self._publish()

    def _feed_forward(self, key: tuple[int, str], setpoint: float) -> list[Change]:
        """Jump the loop to the calibrated alpha for ``setpoint``; the PI trims from there."""
        table, target = self.feedforward.get(key[1]), self.active.get(key)
        if table is None or target is None:
            return []
        before = target.controller.state.alpha
        # What the alpha before the jump plays, from the audio already heard: the loop did not
        # set it, but it is a candidate for the nearest alpha if the setpoint proves out of range.
        reference = setpoint if target.unit.sensor == "pulse" else self._host_bpm
        reading = self._read(key[0], target, reference, None, whole=True)
        if reading is not None:
            target.controller.observe(before, reading[0])
        alpha = target.controller.jump(table.alpha_for(setpoint))
        # The PI's next reading waits until the sensor's whole window was played after the jump:
        # a window of the old tempo would read as an error and kick alpha away from the calibration.
        window = max(MIN_PULSE_WINDOW_S, PULSE_WINDOW_BEATS * 60.0 / setpoint) if target.unit.sensor == "pulse" else 1.0
        target.since, target.fed = -window, setpoint
        if abs(alpha - before) < MIN_ALPHA_STEP:
            return []
        log.info("%s: feed-forward to alpha %+.2f for %g %s (calibrated)", self._name(key), alpha, setpoint,
                 target.unit.unit)
        return [self._change(key, alpha)]

    def _change(self, key: tuple[int, str], alpha: float) -> Change:
        """The alpha a loop sets, as a change of its own row's knob (of the one stream's)."""
        return Change("alpha", round(alpha, 4), key[1], key[0] if self.streams > 1 else None)

    def _name(self, key: tuple[int, str]) -> str:
        return key[1] if self.streams == 1 else f"{key[1]} (row {key[0]})"

    def touched(self, changes: Sequence[Change]) -> None:
        """A performer's plain alpha (or panic) takes the knob back from its target: the
        change's own row's, or every row's for a change without one."""
        had = bool(self.active or self.probing)
        for change in changes:
            concept = None if change.kind == "panic" else change.concept
            if change.kind not in ("panic", "alpha") or (change.kind == "alpha" and concept is None):
                continue
            why = "panic" if concept is None else f"a plain /steer/{concept} write"
            for key in [k for k in dict.fromkeys([*self.active, *self.probing])
                        if change.stream in (None, k[0]) and concept in (None, k[1])]:
                self._drop(key, why)
        if had:
            self._publish()

    def _start(self, key: tuple[int, str], setpoint: float | None, alpha_now: Mapping[str, float],
               alpha_range: tuple[float, float] | None = None) -> None:
        unit = UNITS[key[1]]
        current = self.active.get(key)
        if current is not None:  # a new setpoint keeps the loop's state (bumpless)
            if current.setpoint is None and setpoint is not None:  # a setpoint of its own ends the lock
                self.lock, self._lock_state = False, "off"
            current.setpoint = setpoint
            return
        self.active[key] = ActiveTarget(unit, alpha_range or self.concepts[key[1]], alpha_now.get(key[1], 0.0),
                                        setpoint)
        what = "the clock's tempo" if setpoint is None else f"{setpoint:g} {unit.unit}"
        log.info("%s: a target knob now (%s); alpha follows its sensor", self._name(key), what)

    def _probe(self, key: tuple[int, str], setpoint: float, alpha_now: Mapping[str, float],
               alpha_range: tuple[float, float] | None = None) -> None:
        if self.taps is None or key[1] not in self.taps.names:  # commands.py refuses it first
            log.warning("%s: no probe is read on this stream; the probe target is ignored", key[1])
            return
        current = self.probing.get(key)
        if current is not None:  # a new setpoint keeps the loop's state (bumpless)
            current.setpoint = setpoint
            return
        if key in self.active:
            self._drop(key, "a probe target")
        self.probing[key] = ProbeTarget(alpha_range or self.concepts[key[1]], alpha_now.get(key[1], 0.0), setpoint)
        log.info("%s: a probe target now (p = %g); alpha follows its probe", self._name(key), setpoint)

    def _drop_probe(self, key: tuple[int, str], why: str) -> None:
        target = self.probing.pop(key, None)
        if target is not None:
            log.info("%s: back to a force knob (%s); alpha stays at %+.2f", self._name(key), why,
                     target.controller.state.alpha)

    def _drop(self, key: tuple[int, str], why: str) -> None:
        self._drop_probe(key, why)
        target = self.active.pop(key, None)
        if target is None:
            return
        if target.setpoint is None:
            self.lock, self._lock_state = False, "off"
        log.info("%s: back to a force knob (%s); alpha stays at %+.2f", self._name(key), why,
                 target.controller.state.alpha)

    # --- the audio, after each chunk -------------------------------------------------
    def heard(self, audio: np.ndarray, at: int, clock: ClockSnapshot | None) -> list[Change]:
        """``heard_rows`` for the one stream's chunk ([channels, samples] or [samples])."""
        return self.heard_rows([audio], at, clock)

    def heard_rows(self, rows: Sequence[np.ndarray] | np.ndarray, at: int, clock: ClockSnapshot | None) -> list[Change]:
        """Take a chunk of generated audio per stream (each [channels, samples] or [samples],
        model rate, all starting at ring sample ``at``); the alpha changes the targets ask for,
        if any updated."""
        out = [c for c in self._pending if (c.stream or 0, str(c.concept)) in self.active]
        self._pending = []
        if clock is not None:
            self._host_bpm = float(clock.bpm)
        seconds = 0.0
        for stream, audio in enumerate(rows):
            seconds = self._hear(stream, audio, at)
            for key, target in self.active.items():
                if key[0] != stream:
                    continue
                target.since += seconds
                if target.setpoint is None and clock is not None and key[1] in self.feedforward \
                        and not abs(float(clock.bpm) / target.fed - 1) <= LOCK_REFEED:  # NaN: never fed
                    out += self._feed_forward(key, float(clock.bpm))  # the lock: the host's tempo, new or moved
                    continue
                alpha = self._update(key, target, clock)
                if alpha is not None:
                    out.append(self._change(key, alpha))
        out += self._probe_updates(seconds)
        if self.active or self.taps is not None:  # readings and modes change without a new alpha too
            self._publish()
        return out

    def _hear(self, stream: int, audio: np.ndarray, at: int) -> float:
        """Keep the last BUFFER_S of a stream's audio for its sensors; the chunk's seconds."""
        mono = np.asarray(audio, np.float32)
        mono = mono.mean(axis=0) if mono.ndim == 2 else mono
        heard = self._heard.setdefault(stream, HeardAudio())
        if stream == 0 and self.stage.warped:  # placed by the warp: not where the last block ended
            gap = self.stage.take_gap() or heard.end is None
        else:
            gap = heard.end is None or abs(at - heard.end) > self.ratio
        if gap:  # stopped, silence: start afresh
            heard.audio = np.zeros(0, np.float32)
        heard.audio = np.concatenate([heard.audio, mono])[-int(BUFFER_S * self.rate):]
        heard.end = at + len(mono) * self.ratio
        return len(mono) / self.rate

    def _probe_updates(self, seconds: float) -> list[Change]:
        """The probe loops: each reads its stream's probe, the mean over this chunk's steps
        (one host sync for every stream)."""
        if self.taps is None:
            return []
        rows = self.taps.read_means()
        if rows is None:
            return []
        self._readings = rows
        out = []
        for key, target in self.probing.items():
            before = target.controller.state.alpha
            alpha = target.update(seconds, rows[key[0]].get(key[1]) if key[0] < len(rows) else None)
            if alpha is not None and abs(alpha - before) >= MIN_ALPHA_STEP:
                out.append(self._change(key, alpha))
        return out

    def _update(self, key: tuple[int, str], target: ActiveTarget, clock: ClockSnapshot | None) -> float | None:
        host = float(clock.bpm) if clock is not None else NO_CLOCK_BPM
        reference = host if target.setpoint is None or target.unit.sensor != "pulse" else target.setpoint
        every = target.unit.every_beats * 60.0 / reference
        if target.since < every:
            return None
        dt, target.since = target.since, 0.0
        before = target.controller.state.alpha
        grid = clock.grid if clock is not None and clock.playing else None
        target.measured, target.phase_s = self._read(key[0], target, reference, grid) or (math.nan, math.nan)
        if target.setpoint is None:  # the lock: the host's tempo, pulled onto its beat
            if grid is None:
                self._lock_state = "no clock"
                return None
            # With the warp the beats are its to place: the loop steers the tempo alone.
            pull = 0.0 if self.warping or not math.isfinite(target.phase_s) else target.phase_s
            target.aim = locked_setpoint(host, pull)
        else:
            target.aim = target.setpoint
        alpha = target.controller.update(target.aim, target.measured, dt)
        if target.setpoint is None:
            self._lock_state = self._lock_of(target, host)
        return alpha if abs(alpha - before) >= MIN_ALPHA_STEP else None

    def _read(self, stream: int, target: ActiveTarget, reference: float, grid: Any, *,
              whole: bool = False) -> tuple[float, float] | None:
        """The sensor over the last window of ``stream``'s audio at ``reference`` (BPM, the
        window's and the octave prior's): (measure, beat phase in s, NaN without ``grid``).
        With ``whole``, None until a whole window was heard (otherwise what there is is read)."""
        heard = self._heard.get(stream) or HeardAudio()
        if target.unit.sensor == "pulse":
            window = int(max(MIN_PULSE_WINDOW_S, PULSE_WINDOW_BEATS * 60.0 / reference) * self.rate)
            if whole and len(heard.audio) < window:
                return None
            audio = heard.audio[-window:]
            start = (heard.end or 0.0) - len(audio) * self.ratio
            beat_of = None if grid is None else (lambda t: float(grid.beat_at(round(start + t * self.rate * self.ratio))))
            reading = pulse_reading(audio, self.rate, reference, grid_beat_of=beat_of)
            return reading.bpm, reading.phase_s
        window = int(60.0 / reference * self.rate)
        if whole and len(heard.audio) < window:
            return None
        return centroid_reading(heard.audio[-window:], self.rate), math.nan

    def _lock_of(self, target: ActiveTarget, host: float) -> str:
        if target.controller.state.mode == "out of range":
            return "out of range"
        on_beat = self.warping or (math.isfinite(target.phase_s) and abs(target.phase_s) <= LOCKED_PHASE_S)
        if math.isfinite(target.measured) and abs(target.measured / host - 1) <= LOCKED_TEMPO and on_beat:
            return "locked"
        return "acquiring"

    def _publish(self) -> None:
        both: list[tuple[tuple[int, str], ActiveTarget | ProbeTarget]] = [*self.active.items(), *self.probing.items()]
        loops = {(name if s == 0 else f"{s}:{name}"): t.status() for (s, name), t in both}
        warp = warp_status(self.warp, self.warping)
        if warp["on"]:  # which grid it lays the beats on
            warp["grid"] = "clock" if self.lock else "target"
        published: dict[str, Any] = {"lock": self._lock_state, "target_knobs": loops, "warp": warp}
        if self.taps is not None:
            first = self._readings[0] if self._readings else {}
            published["probes"] = {name: round(p, 3) for name, p in first.items()}
            if self.streams > 1:  # a set of stems: each row's, by row
                published["row_probes"] = [{n: round(p, 3) for n, p in r.items()} for r in self._readings]
        self._published = published  # one reference swap

    def status(self) -> dict[str, Any]:
        """The loops as last published by the engine thread; any thread may call it."""
        return self._published

    def info(self, concept: str, stream: int = 0) -> dict[str, Any] | None:
        """A loop's state for the performance log line of the alpha it set."""
        target = self.active.get((stream, concept)) or self.probing.get((stream, concept))
        return None if target is None else target.status()

    # --- the beat warp, the one stream's path stage (warp_stage.py) ----------------------
    @property
    def warp(self) -> BeatWarp:
        return self.stage.warp

    @property
    def warping(self) -> bool:
        """Whether the warp lays the beats: asked, on one stream, with the lock or a tempo target on."""
        return self.stage.asked and self.streams == 1 and (self.lock or self._tempo_setpoint() is not None)

    def _tempo_setpoint(self) -> float | None:
        """The one stream's tempo target's setpoint (BPM); None without one, or with the lock."""
        target = self.active.get((0, LOCK_CONCEPT))
        return None if target is None else target.setpoint

    def place(self, audio: np.ndarray, at: int, clock: ClockSnapshot | None) -> tuple[np.ndarray, int]:
        """``AudioPath.stage``: a generated block ([channels, n], model rate) as it is to be
        played, and how many samples before it the warp still holds (``at``: the ring sample
        the next sample placed lands on)."""
        pulses = self.stage.pulses(at, clock, lock=self.lock, setpoint=self._tempo_setpoint()) if self.warping else None
        return self.stage.place(audio, at, pulses)

    def rest(self) -> np.ndarray:
        """What the warp holds, as it is, and the warp reset (its end, or the set's)."""
        return self.stage.rest()

    def reserve_s(self) -> float:
        """Audio (seconds) the ring should hold beyond its goal for the warp (``WarpStage.reserve_s``)."""
        if not self.warping:
            return 0.0
        return self.stage.reserve_s(self._host_bpm if self.lock else (self._tempo_setpoint() or self._host_bpm))

    def start_locked(self, alpha_now: Mapping[str, float]) -> None:
        """``serve --tempo-lock``: the lock from the first frame."""
        if self._lock_asked:
            self.ask(TargetAsk(LOCK_CONCEPT, lock=True), alpha_now)


__all__ = ["TargetAsk", "TargetLoop"]
