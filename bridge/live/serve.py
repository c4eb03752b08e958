"""``steerbridge serve``: wire the model, the controls and the audio path, then play.

Follow a knob turn from here: ``oscfront.py`` (decode, parse against ``targets.py``)
/ ``midi.py`` -> ``osc.py`` -> ``commands.py`` -> ``control.py`` (asked state, event
queue) -> ``engine.py`` (takes effect at a step, rolls back the lookahead) ->
``steering_core.stream.timeline`` (smoothed alpha into the hooks) -> codec ->
``audio_path.py`` (resample, effects, limiter) -> ``ring.py`` -> ``outputs.py`` (the
sound card callback, or the silent clock).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from steering_core.codec.streaming import ChunkedDecoder, CodecStreaming
from steering_core.errors import UserError
from steering_core.extract.concepts import load_concept
from steering_core.model.loading import MusicGenHandle, load_model
from steering_core.paths import cache_dir
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector, VectorFileError, load_vector, load_vectors
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.settings import settings_from_controls, within_vocabulary
from steering_core.stream.static_step import open_stream
from steering_core.stream.timeline import Performance

from ..clock.clock import MusicalClock
from ..clock.source import Meter, SyncOptions, open_source
from .audio_path import AudioPath
from .chains import load_chain
from .commands import Commands
from .control import ConceptKnob, ControlState
from .engine import Engine
from .midi import MidiInput, MidiMapper, load_map
from .options import ServeOptions, torch_threads_for
from .osc import OscServer
from .outputs import open_output
from .performance_log import PerformanceLog
from .probe_loop import attach_probe_taps
from .scenes import SceneStore
from .scheduling import fill_bpm
from .stem_live import StemLifecycle
from .stem_mix import StemMix
from .stems import open_stems, stem_set_of, stems_header, stems_status
from .targets import ControlTable

log = logging.getLogger("steerbridge.serve")

DEFAULT_CONCEPTS = ("timbre", "tempo")


def default_vectors(handle: MusicGenHandle) -> list[Path]:
    """No --vectors: the default concepts, extracted and calibrated (layers and knob range
    measured) once per model and kept; the toy's come calibrated with the package."""
    from steering_core.evaluate.calibrated_extract import calibrated_vector
    from steering_core.toy.shipped_vectors import shipped_default

    from .options import DEFAULT_PROMPT

    # Keyed on the weights too: a retrained model of the same shape needs its own vectors;
    # "cal1": vectors cached before calibration existed are not reused.
    folder = cache_dir("vectors") / f"{handle.config_sha256[:16]}-{handle.weights_sha256[:12]}-cal1"
    paths = []
    for name in DEFAULT_CONCEPTS:
        path = folder / f"{name}.safetensors"
        shipped = shipped_default(handle, name)
        if path.is_file() and shipped is not None and shipped.probe is not None and load_vector(path).probe is None:
            path.unlink()  # cached from the shipped file before it carried its probe: take the new one
        if not path.is_file():
            if shipped is not None:
                log.info("no --vectors given: %r is the toy's shipped calibrated vector (layers %s, alpha %g..%g)",
                         name, list(shipped.layers), *shipped.alpha_range)
                shipped.save(path)
            else:
                log.info("no --vectors given: extracting %r for this model and measuring its best layers and knob "
                         "range, once (minutes on a CPU; cached in %s)", name, folder)
                calibrated_vector(handle, load_concept(name), prompt=DEFAULT_PROMPT)[0].save(path)
        paths.append(path)
    return paths


def vector_files(paths: list[Path]) -> list[tuple[SteeringVector, Path]]:
    """Each vector with the file it came from (a folder's files keep their own names,
    whatever concept they hold). Two files for one concept are refused: one knob each."""
    out: list[tuple[SteeringVector, Path]] = []
    seen: dict[str, Path] = {}
    for path in paths:
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            load_vectors(path)  # raises the usual "folder holds no vector files"
        for file in files:
            vector = load_vector(file)
            if vector.concept in seen:
                raise VectorFileError(f"{file} and {seen[vector.concept]} both hold concept {vector.concept!r}; "
                                      "pass one of them")
            seen[vector.concept] = file
            out.append((vector, file))
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    """The live bridge, startable and stoppable in-process (tests use it that way)."""

    def __init__(self, options: ServeOptions, handle: MusicGenHandle | None = None) -> None:
        self.options = o = options
        # OSC first: a patch that sends during the (long) model load gets a "loading"
        # /status, and its other messages are held and run once the server is ready.
        self.osc = OscServer(None, o.osc_host, o.osc_port)
        self.osc.listen()
        # The server owns the process while it runs (torch threads, a frozen heap); what
        # it changes it puts back when it stops, for a caller that goes on (the tests).
        self._torch_threads_before = torch.get_num_threads()
        try:
            self._build(handle)
        except BaseException:
            self.osc.stop()
            torch.set_num_threads(self._torch_threads_before)
            raise
        self.osc.attach(self.commands)
        if self.stems is not None and self.stems.spare:  # stems that come and go (bridge/live/stem_live.py)
            lifecycle = StemLifecycle(self.stems, [v for v, _ in self.vectors], o.chain, self.perf_log, self._retable)
            self.commands.stem_add, self.commands.stem_remove = lifecycle.add, lifecycle.remove
            self.commands.stem_entering = lifecycle.entering
        self.started = time.monotonic()
        self.stop_requested = threading.Event()

    def _build(self, handle: MusicGenHandle | None) -> None:
        o = self.options
        stem_set = stem_set_of(o)  # a bad set file is refused before the model loads
        if stem_set is not None and len(stem_set.stems) > 1 and o.engine.tempo_lock:
            raise UserError(f"--tempo-lock plays on one stream for now; this set has {len(stem_set.stems)} stems")
        if stem_set is not None and o.engine.beat_warp:
            raise UserError("--beat-warp plays on one stream, not on a set of stems")
        self.handle = handle or load_model(o.model, o.device, o.dtype)
        threads = torch_threads_for(self.handle.device.type, self.handle.d_model, o.threads)
        if threads is not None:
            torch.set_num_threads(threads)
        vector_paths = [Path(p) for p in [*o.vectors, *(stem_set.vectors if stem_set else ())]] \
            or default_vectors(self.handle)
        self.vectors: list[tuple[SteeringVector, Path]] = vector_files(vector_paths)
        if o.engine.tempo_lock and not any(v.concept == "tempo" for v, _ in self.vectors):
            raise UserError("--tempo-lock drives the tempo knob, and no tempo vector is loaded (--vectors)")
        steerer = Steerer(self.handle)
        for vector, _ in self.vectors:
            steerer.add(vector, alpha=0.0)
        settings = within_vocabulary(settings_from_controls(vars(o)), self.handle.decoder_config.vocab_size)
        prompt = fill_bpm(o.prompt, o.bpm)  # {bpm} in the prompt: the clock's tempo
        self.stems = None if stem_set is None else open_stems(self.handle, o, stem_set, [v for v, _ in self.vectors],
                                                              steerer, settings)
        path: AudioPath | StemMix
        if self.stems is not None:  # a set of stems: one batch, a row each (bridge/live/stems.py)
            self.performance: Performance = self.stems.performance
            self.control, self.output, path = self.stems.control, self.stems.output, self.stems.path
        else:
            if o.cuda_graphs is None:
                stream = MusicStream(self.handle, prompt, seed=o.seed, settings=settings, steerer=steerer)
            else:
                stream = open_stream(self.handle, prompt, cuda_graphs=o.cuda_graphs,
                                     seed=o.seed, settings=settings, steerer=steerer)
            self.performance = Performance(stream, steerer, smoothing_ms=o.smoothing_ms)
            taps = attach_probe_taps(stream, [v for v, _ in self.vectors])  # before the first step
            self.control = ControlState([ConceptKnob.of(v) for v, _ in self.vectors], o.prompt,
                                        settings, vocab_size=self.handle.decoder_config.vocab_size,
                                        probe_targets=taps is not None)
            # The output first: its sample rate and channel count shape the path, ring and recording.
            self.output = open_output(o.audio_out, o.jack_connect, stem_channels=o.stem_channels)
            path = AudioPath.for_output(self.output, self.handle.sample_rate, load_chain(o.chain), o.record)
        self.scenes = SceneStore(o.scenes_dir)
        self.commands = Commands(self.control, self.scenes, self.status)
        self.ring = path.ring
        self.recorder = path.recorder
        log_path = o.log or (str(Path(o.record).with_suffix(".performance.jsonl")) if o.record else None)
        self.codec_streaming = CodecStreaming.for_model(self.handle)  # the codec's own chunk and context
        if o.codec_chunk is not None:
            self.codec_streaming = replace(self.codec_streaming, chunk_frames=o.codec_chunk)
        self.perf_log = PerformanceLog(log_path, self._log_header()) if log_path else None
        decoder = ChunkedDecoder.streaming(self.handle, self.codec_streaming)
        meter = Meter.parse(o.meter)
        sync = SyncOptions(bpm=o.bpm, meter=meter, midi_in=None if o.midi_in == "none" else o.midi_in,
                           midi_api=o.midi_api)
        # The grid is placed on this ring's counters, at the output's rate; its latency is
        # known once the output has started (serve's start sets it).
        self.clock = MusicalClock(open_source(o.sync, sync), self.ring, self.output.sample_rate,
                                  self.output.latency_s, meter=meter, bpm=o.bpm,
                                  latency_of=lambda: self.output.latency_s)
        self.commands.clock = self.clock
        self.engine = Engine(self.performance, decoder, path, self.control, settings=o.engine, perf_log=self.perf_log,
                             clock=self.clock, prompt_template=o.prompt,
                             row_prompts=[s.prompt for s in self.stems.specs] if self.stems else ())
        if isinstance(path, AudioPath):  # the beat warp (lock, tempo target): the one stream's path stage (engine thread)
            targets, clock = self.engine.targets, self.clock
            path.stage = lambda audio, at: targets.place(audio, at, clock.snapshot)
            path.reserve_s, path.stage_rest = targets.reserve_s, targets.rest
            if o.engine.beat_warp and not o.engine.tempo_lock:
                log.info("--beat-warp: the warp plays while the tempo lock (/sync/lock 1, --tempo-lock) or a tempo target "
                         "(/steer/tempo/target) is on")

        self.midi: MidiInput | None = None
        self.mapper: MidiMapper | None = None
        if o.midi_in != "none":
            stem_names = [s.name for s in stem_set.stems] if stem_set else []
            controller = load_map(o.midi_map, stem_names)
            for name in controller.later_stems:
                log.info("MIDI map %r: stem %r is not in the set (stems: %s); its controls act once /stem/add %s "
                         "brings it in", controller.name, name, ", ".join(stem_names), name)
            self.mapper = MidiMapper(controller, self.commands)
            self.midi = MidiInput(o.midi_in, self.mapper, api=o.midi_api)
            self.commands.midi_learn = self.mapper.learn
            self.commands.midi_save = self.mapper.save
            if self.mapper.unbound:
                log.info("MIDI map %r: %d controls have no concept loaded for them (%s)", self.mapper.name,
                         len(self.mapper.unbound), ", ".join(self.mapper.unbound))

    def _retable(self, table: ControlTable) -> None:
        self.commands.retable(table)
        if self.mapper is not None:
            self.mapper.retable(table)
        self.osc.send_table(table)

    def _log_header(self) -> dict[str, Any]:
        o = self.options
        stream = self.performance.stream
        return {
            "model": o.model, "model_config_sha256": self.handle.config_sha256, "seed": o.seed,
            "prompt": stream.prompts[0], "clock": {"sync": o.sync, "bpm": o.bpm, "meter": o.meter,
                                                  "quantize": o.engine.quantize, "transport": o.engine.transport},
            "settings": vars(stream.settings), "smoothing_ms": o.smoothing_ms,
            "window_frames": stream.window_frames, "reprime_frames": stream.reprime_frames,
            "codec_streaming": self.codec_streaming.as_dict(),
            "vectors": [{"concept": v.concept, "path": str(p.resolve()), "sha256": file_sha256(p)} for v, p in self.vectors],
            **({"stems": stems_header(self.stems)} if self.stems is not None else {}),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        # Everything loaded so far (the model's modules, tensors, tokenizer) lives for the
        # whole set: take it out of the garbage collector's sight, so a collection never
        # walks it mid-set and stalls the engine.
        gc.collect()
        gc.freeze()
        self.engine.start()
        self.output.start(self.ring)
        self.clock.start()
        self.osc.start()
        concepts = ", ".join(f"{v.concept} {v.alpha_range[0]:g}..{v.alpha_range[1]:g}" for v, _ in self.vectors)
        what = repr(self.options.prompt) if self.stems is None else f"{len(self.stems.names)} stems"
        log.info("playing %s on %s (model %s, %d Hz out); concepts: %s", what, self.output.name,
                 self.options.model, self.output.sample_rate, concepts or "none")
        if self.midi is not None:
            log.info("MIDI in: %s with map %r", self.midi.name, self.mapper.name if self.mapper else "?")
        if self.recorder is not None:
            log.info("recording to %s", self.recorder.path)

    def stop(self) -> None:
        """Inputs first, then the engine (which closes the performance log, on its own
        thread), then the audio; the recording is finished last, whatever failed before it."""
        try:
            if self.midi is not None:
                self.midi.close()
            self.osc.stop()
            self.clock.stop()
            self.engine.stop()
            self.engine.path.flush()
            time.sleep(0.05)
            self.output.stop()
        finally:
            gc.unfreeze()
            torch.set_num_threads(self._torch_threads_before)
            if self.stems is not None:
                self.stems.path.close()
            elif self.recorder is not None:
                self.recorder.close()

    def status(self) -> dict[str, Any]:
        view = self.control.snapshot()
        engine = self.engine.status()
        row_probes = engine.pop("row_probes", ())  # a set of stems': under each stem
        return {
            **engine, "state": "running",
            "targets": view["targets"], "enabled": view["enabled"], "knobs": view["knobs"],
            "prompt": view["prompt"], "settings": view["settings"], "transport": "play" if engine["playing"] else "stop",
            "model": self.options.model, "device": str(self.handle.device), "dtype": str(self.handle.dtype),
            "sample_rate": self.output.sample_rate, "model_sample_rate": self.handle.sample_rate,
            "errors": view["errors"], "last_error": view["last_error"],
            "audio_out": self.output.name, "audio_channels": self.output.channels,
            "recording": str(self.recorder.path) if self.recorder else None,
            "codec_streaming": self.codec_streaming.as_dict(),
            "osc": {"host": self.osc.host, "port": self.osc.port, "packets": self.osc.packets,
                    "subscribers": len(self.osc.subscribers), "dropped_replies": self.osc.replies_dropped,
                    "front_restarts": self.osc.front_restarts, "coalesced": self.control.coalesced},
            "midi": None if self.midi is None else {"port": self.midi.name, "map": self.mapper.name if self.mapper else None,
                                                     "ignored": self.mapper.ignored if self.mapper else 0,
                                                     "sysex_dropped": self.midi.sysex_dropped},
            "clock": self.clock.status(),
            **({"stems": stems_status(self.stems, self.options.record, engine["target_knobs"], row_probes)}
               if self.stems is not None else {}),
            "uptime_s": round(time.monotonic() - self.started, 2),
        }

    def status_line(self) -> str:
        s = self.engine.status()
        lat = s["control_latency_ms"]
        lat_text = f"p50 {lat['p50']:.0f} p95 {lat['p95']:.0f} ms" if lat["n"] else "-"
        alphas = " ".join(f"{k} {v:+.2f}" for k, v in s["alphas"].items())
        rtf = f"{s['rtf']:.1f}" if s["rtf"] else "-"
        state = "▶" if s["playing"] else "■"
        return (f"{state} {s['frames_generated'] / self.handle.frame_rate:7.1f}s  rtf {rtf}  buf {s['buffer_ms']:3.0f}ms  "
                f"xruns {s['underruns']}  latency {lat_text}  errors {self.control.errors}  {alphas}")


def latency_summary(lat: dict[str, Any]) -> str:
    """The control-latency part of the final line; "no knob moved" when there is nothing to measure."""
    if not lat.get("n") or lat.get("p50") is None:
        return "control latency: no knob moved"
    return f"control latency p50 {lat['p50']:.0f} / p95 {lat['p95']:.0f} ms over {lat['n']} events"


def run_serve(options: ServeOptions) -> int:
    server = Server(options)
    stop = server.stop_requested

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        log.info("%s: stopping cleanly (the recording stays valid)", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    tty = options.status_line and sys.stderr.isatty()
    code = 0
    try:
        server.start()
        deadline = None if options.duration is None else time.monotonic() + options.duration
        last_line = 0.0
        while not stop.is_set():
            if not server.engine.running:
                log.error("the engine stopped: %s", server.engine.fault)
                code = 1
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            now = time.monotonic()
            if tty and now - last_line >= 0.25:
                print("\r" + server.status_line()[:200].ljust(120), end="", file=sys.stderr, flush=True)
                last_line = now
            elif not tty and options.status_line and now - last_line >= 10.0:
                log.info(server.status_line())
                last_line = now
            stop.wait(0.05)
    finally:
        if tty:
            print(file=sys.stderr)
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    final = server.status()
    log.info("stopped after %.1f s of audio (%d frames), %d underruns, %s",
             final["frames_generated"] / server.handle.frame_rate, final["frames_generated"], final["underruns"],
             latency_summary(final["control_latency_ms"]))
    if server.recorder is not None:
        log.info("recording: %s", server.recorder.summary())
    if server.perf_log is not None:
        log.info("performance log: %s", server.perf_log.summary())
    return code
