"""The engine thread: control events in, steered frames through the codec, audio out.

One loop, on one thread that owns the model:

1. drain control events; each takes effect at the first step whose tokens are all
   still unplayed (``Performance.apply`` rolls back what was generated beyond it, so
   a knob never waits behind the lookahead), if the ring holds enough audio to last
   while the next chunk is made again; if not, at the next step (``deferred_rollbacks``);
2. if the ring buffer holds less than ``ring_ms``: generate the frames the next
   decode chunk needs, decode, resample, run the effect chain, write the ring (and
   the recorder);
3. otherwise generate up to ``lookahead_frames`` ahead, or sleep until woken by a
   control event or the ring draining.

The longest step is a re-prime (``MusicStream`` starting a new window: a prefill of
half the window). Its cost is measured once at start and again at every re-prime; as
one comes near, the ring's goal rises by that much (times ``reprime_margin``), so the
audio already buffered covers it.

Latency bookkeeping: an event's first affected frame is found in the ring by its
sample counter; when the reader passes that counter, arrival -> output is recorded.

With a musical clock (``clock``), the loop first lets the clock place its source's
readings; a quantised change waits in ``scheduling.OnTheGrid`` for the step that first
touches the frame on its bar line; with ``--transport follow`` the source's play arms an
entry on the next downbeat at the output (the ring is fed silence up to that sample,
then the music fades in on it) and its stop fades out. While stopped the ring is fed
silence, so its counters keep pace with the output and the grid stays placed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from steering_core.codec.streaming import ChunkedDecoder
from steering_core.stream.timeline import Change, Performance

from ..clock.grid import Quantize
from .audio_path import AudioPath
from .control import ControlEvent, ControlState
from .latency import LatencyMeter
from .options import EngineSettings
from .performance_log import PerformanceLog
from .scheduling import BPM_FIELD, BpmPrompts, OnTheGrid, fill_bpm
from .stem_mix import StemMix
from .target_loop import TargetLoop

if TYPE_CHECKING:
    from ..clock.clock import MusicalClock

log = logging.getLogger("steerbridge.engine")

#: A rollback is paid for out of the ring only if the ring holds this many times the measured
#: cost of everything the next write needs after it, and half its goal.
ROLLBACK_COST_MARGIN = 1.5
RECENT_COSTS = 16  # steps and chunk writes a rollback's cost is judged by


class Engine:
    """Owns the model; see the module docstring for the loop.

    Thread contract: everything runs on the engine's own thread (``start`` starts it),
    which owns the stream, the performance and the steerer's hooks, and is the ring's
    one writer. Other threads talk to it only through ``ControlState`` (the event queue
    and ``wake``); ``status``, ``stop`` and the read-only properties are safe from any
    thread."""

    def __init__(self, performance: Performance, decoder: ChunkedDecoder, path: AudioPath | StemMix,
                 control: ControlState,
                 *, settings: EngineSettings | None = None, perf_log: PerformanceLog | None = None,
                 clock: MusicalClock | None = None, prompt_template: str | None = None,
                 row_prompts: Sequence[str] = ()) -> None:
        self.performance = performance
        self.stream = performance.stream
        self.decoder = decoder
        self.path = path
        self.ring = path.ring
        self.control = control
        self.settings = settings or EngineSettings()
        self.perf_log = perf_log
        self.latency = LatencyMeter(self.ring)
        self.hop = self.stream.handle.hop_length
        self.frame_rate = self.stream.handle.frame_rate
        self.max_delay = self.stream.max_delay  # steps from a codebook-0 token to a complete frame
        self.ring_target = int(self.settings.ring_ms / 1000 * path.device_rate)
        self.pushed = 0  # frames handed to the decoder
        self._playing = True  # the transport: this thread's alone, set by transport events
        self.compute_s = 0.0  # time spent generating and decoding
        self.steps = 0
        # What a rollback costs: the slowest recent steps (re-primes left out) and chunk writes,
        # not their mean, so a busy machine's spikes are counted before the ring is spent on them.
        self._recent_steps: deque[float] = deque(maxlen=RECENT_COSTS)
        self._recent_writes: deque[float] = deque(maxlen=RECENT_COSTS)
        self.deferred_rollbacks = 0  # changes landed past the first unplayed step: the ring could not pay
        self.reprime_s = 0.0  # the longest re-prime so far: a probe at start, then each real one
        self.fault: BaseException | None = None
        self.clock = clock
        per_frame = Fraction(self.hop * path.device_rate, path.model_rate)
        self.grid = OnTheGrid(clock, per_frame, self.max_delay, Quantize.parse(self.settings.quantize))
        self._enter_at: int | None = None  # the ring sample the music enters at (play, on the downbeat)
        self._clock_playing = True  # the clock's transport as last followed
        # The prompts as given, {bpm} in them unfilled: the one stream's, or each stem's row's.
        self.bpm_prompts = BpmPrompts(dict(enumerate(row_prompts)) or {None: prompt_template or self.performance.prompt})
        self.targets = TargetLoop(control.loop_ranges(), path.model_rate, path.ratio, lock=self.settings.tempo_lock,
                                  warp=self.settings.beat_warp, streams=self.stream.batch if isinstance(path, StemMix) else 1,
                                  feedforward=control.loop_feedforward(),  # target knobs, the lock: this thread's
                                  taps=getattr(self.stream, "taps", None))  # the probes, if serve set them
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.control.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        elif self._thread.ident is None and self.perf_log is not None:  # never started: no thread will end the log
            self.perf_log.end(self.frames_generated, self.codes_sha256())

    @property
    def playing(self) -> bool:
        """The transport (play or stop): owned here, changed only by transport events."""
        return self._playing

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def frames_generated(self) -> int:
        """Frames turned into audio (final: never rolled back)."""
        return self.decoder.emitted_frames

    @property
    def rtf(self) -> float | None:
        """Audio seconds generated per second of compute (the headroom)."""
        if self.compute_s <= 0:
            return None
        return self.steps / self.frame_rate / self.compute_s

    def codes_sha256(self) -> str:
        codes = self.stream.codes[:, :, : self.frames_generated].cpu().contiguous()
        return hashlib.sha256(codes.numpy().tobytes()).hexdigest()

    # --- the loop --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with self.stream.steering():
                self._probe_reprime()
                self.targets.start_locked(self.performance.current)
                while not self._stop.is_set():
                    self._follow_clock()
                    self._take_events()
                    self.latency.poll()
                    goal = self._ring_goal()
                    if (not self._playing or self._enter_at is not None) and self._feed_silence(goal):
                        self.control.wake.wait(0.005)
                        self.control.wake.clear()
                    elif self.ring.fill < goal:
                        self._produce_chunk()
                        self.ring.expect_audio = True
                    elif self.stream.frames_complete < self.decoder.emitted_frames + self._frames_per_chunk() \
                            + self.settings.lookahead_frames:
                        self._step()
                    else:
                        wait = (self.ring.fill - goal) / self.path.device_rate
                        self.control.wake.wait(min(max(wait, 0.0005), 0.005))
                        self.control.wake.clear()
        except BaseException as exc:  # a fault must end the set cleanly, not hang it
            self.fault = exc
            log.exception("engine stopped by a fault: %s", exc)
        finally:
            self.ring.expect_audio = False
            if self.perf_log is not None:
                self.perf_log.end(self.frames_generated, self.codes_sha256(), self.rows_sha256())

    def rows_sha256(self) -> list[str]:
        """A hash of each row's tokens (each stem's, in a set of stems)."""
        codes = self.stream.codes[:, :, : self.frames_generated].cpu().contiguous()
        return [hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in codes]

    def _frames_per_chunk(self) -> int:
        return self.decoder.frames_per_pull

    def _step(self) -> None:
        for event, step in self.grid.due(self.performance.next_step, self._untouched_frame()):
            self._apply(event, step)
        reprimes = self.stream.reprimes
        t = time.perf_counter()
        self.performance.step()
        took = time.perf_counter() - t
        self.compute_s += took
        self.steps += 1
        if self.stream.reprimes == reprimes:
            self._recent_steps.append(took)
        if self.stream.reprimes != reprimes and took > self.reprime_s:
            if took > 1.2 * self.reprime_s:  # worth a line only when it grew by much
                log.info("re-prime took %.1f ms (longest yet): the ring now tops up by %.0f ms before each",
                         took * 1000, self._reprime_reserve(took) / self.path.device_rate * 1000)
            self.reprime_s = took

    # --- riding through re-primes ----------------------------------------------------
    def _probe_reprime(self) -> None:
        if self.settings.reprime_margin <= 0:
            return
        self.reprime_s = self.stream.measure_reprime()
        log.info("a re-prime (every %.1f s) takes %.1f ms here; the ring tops up by %.0f ms before each",
                 (self.stream.window_frames - self.stream.reprime_frames) / self.frame_rate, self.reprime_s * 1000,
                 self._reprime_reserve(self.reprime_s) / self.path.device_rate * 1000)

    def _reprime_reserve(self, seconds: float) -> int:
        """Extra ring samples to hold when a re-prime of ``seconds`` comes; what the ring has room for."""
        want = int(seconds * self.settings.reprime_margin * self.path.device_rate)
        return max(0, min(want, self.ring.capacity - 2 * self.ring_target - self.path.reserve - self.path.headroom))

    def _ring_goal(self) -> int:
        """The ring's fill goal: ``ring_ms`` and the path's reserve (the beat warp's), plus the
        re-prime reserve while one is near: close enough that the frames before it can carry it."""
        reserve, base = self._reprime_reserve(self.reprime_s), self.ring_target + self.path.reserve
        if reserve == 0:
            return base
        samples_per_frame = self.hop * self.path.ratio
        lead = math.ceil(reserve / samples_per_frame) + self._frames_per_chunk() + self.max_delay + 1
        return base + reserve if self.stream.steps_until_reprime <= lead else base

    def _produce_chunk(self) -> None:
        need = self.decoder.emitted_frames + self._frames_per_chunk()
        while self.stream.frames_complete < need:
            self._step()
        t = time.perf_counter()
        complete = self.stream.frames_complete
        if complete > self.pushed:
            self.decoder.push(self.stream.codes[:, :, self.pushed:complete])
            self.pushed = complete
        first = self.decoder.emitted_frames
        pulled = self.decoder.pull()  # [rows, channels, n]: a set of stems' path takes every row
        audio = pulled if isinstance(self.path, StemMix) else pulled[0]
        last = self.decoder.emitted_frames
        if audio.shape[-1]:
            at = self.path.push(audio)
            self.latency.placed((first, last), at, self.hop * self.path.ratio)
            self.grid.placed(first, at)
            self._recent_writes.append(time.perf_counter() - t)
            rows = audio if isinstance(self.path, StemMix) else audio[None]  # each stem's loops hear its own row
            for change in self.targets.heard_rows(rows, at, None if self.clock is None else self.clock.snapshot):
                info = self.targets.info(str(change.concept), change.stream or 0)
                self._apply(ControlEvent((change,), "target loop", f"/steer/{change.concept}/target", info=info),
                            self.performance.next_step)
        self.compute_s += time.perf_counter() - t

    def _take_events(self) -> None:
        for event in self.control.drain():
            self.targets.touched(event.changes)  # a plain knob write takes the knob back from its target
            if event.target is not None:
                for ask in event.target:  # every target a pattern named
                    self.targets.ask(ask, self.performance.row_current(ask.stream or 0))
                if self.perf_log is not None:
                    self.perf_log.event(event, time.monotonic() - self.started)
            if event.transport is not None:
                self._transport(event)
            if event.changes:
                quantize = self.grid.quantize_of(event)
                frame = self.grid.landing(event, quantize, self._untouched_frame())
                if frame is None:
                    self._apply(event)
                else:
                    self.grid.hold(event, quantize, frame)

    def _apply(self, event: ControlEvent, step: int | None = None) -> None:
        # The first step whose tokens are all unplayed: its last codebook's token belongs
        # to the first frame not yet turned into audio. Rolling back to it means generating
        # again what was generated past it; the sound comes first, so when the ring cannot
        # pay for all of that (a slow model, a knob sending many changes a second), the
        # change rolls back only as far as the ring can pay for, down to none (the next
        # step), a few frames later. A change held for its bar line comes with its
        # ``step``, normally the next one (no rollback at all); a knob resent at its value, none.
        first_unplayed = self.decoder.emitted_frames + self.max_delay
        want = first_unplayed if step is None else max(step, first_unplayed)
        at = want
        event.changes = tuple(self._filled(c) for c in event.changes)
        if want < self.performance.next_step and not self.performance.restates(event.changes):
            at = self.performance.next_step - self._affordable_rollback(self.performance.next_step - want)
            if at > want:
                self.deferred_rollbacks += 1
        try:
            event.step = self.performance.apply(event.changes, at_step=at)
        except (KeyError, ValueError) as exc:  # validated upstream; a last guard, never fatal
            log.warning("dropped control change from %s: %s", event.source, exc)
            return
        complete = self.stream.frames_complete
        if complete < self.pushed:
            self.decoder.rewind(complete)
            self.pushed = complete
        if any(c.kind == "panic" for c in event.changes):
            self.path.fade(up=True, ms=self.settings.fade_ms)
        self.latency.expect(max(0, event.step - self.max_delay), event)
        event.landed = self.grid.where(event.step - self.max_delay)
        if isinstance(self.path, StemMix):  # a stem's mute, solo, entry or exit: the mix's, no token changes
            self.path.applied(event.changes, None if event.landed is None else int(event.landed["sample"]))
        if self.perf_log is not None:
            self.perf_log.event(event, time.monotonic() - self.started)

    def _affordable_rollback(self, steps: int) -> int:
        """The most of the last ``steps`` steps the ring can pay to generate again (0..steps)."""
        lo, hi = 0, steps  # _can_regenerate(0) holds; the cost only grows with the steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._can_regenerate(mid) else (lo, mid - 1)
        return lo

    @property
    def step_s(self) -> float:  # a decode step's cost as a rollback counts it: the slowest of late
        return max(self._recent_steps, default=0.0)

    @step_s.setter
    def step_s(self, seconds: float) -> None:  # a test's way to say how slow this machine is
        self._recent_steps.clear()
        self._recent_steps.append(seconds)

    @property
    def write_s(self) -> float:  # a chunk's decode, effects and ring write, the slowest of late
        return max(self._recent_writes, default=0.0)

    def _can_regenerate(self, steps: int) -> bool:
        """Whether the ring can last, keeping half its goal, while all the next write needs
        once ``steps`` are rolled back is done: the steps its chunk lacks (those among them),
        its write, a re-prime if one falls among them. (Counting only the steps done again let
        a flood of knob moves leave a chunk to be made from scratch in less than the ring held.)"""
        if steps <= 0:
            return True
        need = self.decoder.emitted_frames + self._frames_per_chunk()
        to_write = max(0, need - self.stream.frames_complete + steps)
        reprime_s = self.reprime_s if self.stream.steps_until_reprime + steps < to_write else 0.0
        cost_s = to_write * self.step_s + self.write_s + reprime_s
        cost = cost_s * ROLLBACK_COST_MARGIN * self.path.device_rate
        return self.ring.fill - cost >= self.ring_target // 2

    def _transport(self, event: ControlEvent) -> None:
        play = event.transport == "play"
        if play == self._playing:
            return
        self.ring.expect_audio = False
        entering, self._enter_at = self._enter_at, None
        if play:
            self._enter_at = self._downbeat_ahead()
            if self._enter_at is None:
                self.path.fade(up=True, ms=self.settings.fade_ms)
        elif entering is None:  # the audio already buffered fades out now: the stop is heard at once, not a click
            self.path.fade_out_now(self.settings.fade_ms)
        self._playing = play
        if self._enter_at is not None and self.clock is not None:  # the log says where the music enters
            bar, beat = self.clock.snapshot.bar_beat(self._enter_at) or (None, None)
            event.landed = {"sample": self._enter_at, "bar": bar, "beat": beat}
        where = "" if self._enter_at is None else f", entering on the downbeat at sample {self._enter_at}"
        log.info("transport: %s at frame %d%s", "play" if play else "stop", self.frames_generated, where)
        if self.perf_log is not None:
            self.perf_log.event(event, time.monotonic() - self.started)

    # --- the musical clock ------------------------------------------------------------
    def _follow_clock(self) -> None:
        """The clock places its readings; the transport follows its play and stop
        (``--transport follow``); a tempo change re-conditions a ``{bpm}`` prompt on a bar line."""
        if self.clock is None:
            return
        snap = self.clock.update()
        if snap.grid is None:
            return
        if self.settings.transport == "follow" and snap.playing != self._clock_playing:
            self._clock_playing = snap.playing
            state = "play" if snap.playing else "stop"
            self._transport(ControlEvent((), f"clock {snap.source}", f"/transport/{state}", transport=state))
        for row, template in self.bpm_prompts.due(float(snap.bpm), self.stream.prompts):
            event = ControlEvent((Change("prompt", template, stream=row),), f"clock {snap.source}", BPM_FIELD,
                                 quantize="bar")
            frame = self.grid.landing(event, Quantize("bar"), self._untouched_frame())
            if frame is None:
                self._apply(event)
            else:
                self.grid.hold(event, Quantize("bar"), frame)

    def _untouched_frame(self) -> int:
        """The first frame no generated step has touched: a quantised change placed from here
        lands at its step without a rollback, so a slow machine cannot make it late."""
        return max(self.decoder.emitted_frames, self.performance.next_step - self.max_delay)

    def _filled(self, change: Change) -> Change:
        """A prompt change with ``{bpm}`` filled from the clock (the log keeps the filled text)."""
        if change.kind != "prompt" or self.clock is None:
            return change
        self.bpm_prompts.given(change.stream, str(change.value))
        return replace(change, value=fill_bpm(str(change.value), float(self.clock.snapshot.bpm)))

    def _downbeat_ahead(self) -> int | None:
        """The ring sample of the next downbeat the music can still enter on; None when no
        clock rolls (then the music comes back at once)."""
        clock = self.clock
        snap = None if clock is None else clock.snapshot
        if clock is None or snap is None or not snap.playing or snap.grid is None:
            return None
        earliest = self.ring.written + self.path.delay
        return math.ceil(snap.next_boundary(max(earliest, clock.heard_now() or earliest), Quantize("bar")))

    def _feed_silence(self, goal: int) -> bool:
        """Keep the ring at its goal with silence (stopped, or waiting for the downbeat), up
        to the entry sample; True while silence goes on, False once the music enters."""
        room = goal - self.ring.fill
        if self._enter_at is not None:
            room = min(room, self._enter_at - self.path.delay - self.ring.written)
        if room > 0:
            self.path.silence(room)
        if self._enter_at is None or self.ring.written + self.path.delay < self._enter_at:
            return True
        self.grid.restart(self.decoder.emitted_frames, self._enter_at)
        self.path.fade(up=True, ms=self.settings.fade_ms, after=self.path.delay)  # the first sample on the downbeat
        self._enter_at = None
        return False

    def status(self) -> dict[str, Any]:
        return {
            "alphas": {k: round(v, 4) for k, v in self.performance.current.items()},
            "frames_generated": self.frames_generated,
            "rtf": None if self.rtf is None else round(self.rtf, 3),
            "buffer_ms": round(self.ring.fill / self.path.device_rate * 1000, 1),
            "underruns": self.ring.underruns,
            # What the output asked for and what it got, in samples at the device rate: the
            # music flows when played keeps up with requested, whatever the machine's load.
            "samples_requested": self.ring.requested,
            "samples_played": self.ring.read,
            "control_latency_ms": self.latency.summary(),
            "step": self.performance.next_step,
            "reprimes": self.stream.reprimes,
            "deferred_rollbacks": self.deferred_rollbacks,
            "reprime_ms": round(self.reprime_s * 1000, 1),
            "playing": self._playing,
            "quantised_waiting": len(self.grid.held),
            **self.targets.status(),
        }
