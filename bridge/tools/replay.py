"""``render --automation``: play a performance again, offline, with the same engine.

From a performance log, every event lands at the step it landed at live, so the
tokens are bit-identical to the set (same model, seed and vector files); the log's
``end`` line carries a hash of the played tokens and the replay is checked against it.

From a ``.mid`` file, CC and program-change messages go through a controller map
exactly as they would live, each at the step nearest its time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from steering_core.codec.streaming import decode
from steering_core.errors import UserError
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.settings import settings_from_controls
from steering_core.stream.stem_performance import StemPerformance
from steering_core.stream.stem_stream import StemStream
from steering_core.stream.timeline import Change, Performance

from ..live.commands import Commands
from ..live.control import ConceptKnob, ControlState
from ..live.midi import MidiMapper, load_map
from ..live.performance_log import Performed, read_log
from ..live.scenes import SceneStore
from ..live.setfile import SPARE_RE

log = logging.getLogger("steerbridge.replay")


@dataclass
class Replayed:
    audio: np.ndarray  # [channels, samples]
    frames: int
    codes_sha256: str
    matches_log: bool | None  # None: the log had no end line to check against


def midi_schedule(path: Path, vectors: Sequence[SteeringVector], prompt: str, settings: SamplingSettings,
                  frame_rate: float, midi_map: str, vocab_size: int) -> Performed:
    """A .mid file's CCs through a controller map -> changes at steps."""
    try:
        midi = mido.MidiFile(str(path))
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read MIDI file {path}: {exc}") from None
    control = ControlState([ConceptKnob(v.concept, v.alpha_range) for v in vectors], prompt, settings,
                           vocab_size=vocab_size)
    mapper = MidiMapper(load_map(midi_map), Commands(control, SceneStore(), lambda: {}))
    out = Performed(header={})
    t = 0.0
    for msg in midi:  # iterating a MidiFile yields messages with delta times in seconds
        t += msg.time
        if msg.is_meta:
            continue
        mapper.handle(msg)
        for event in control.drain():
            if event.changes:
                out.schedule.append((round(t * frame_rate), list(event.changes)))
    out.frames = round(t * frame_rate) + 1
    return out


def replay(handle: MusicGenHandle, vectors: Sequence[SteeringVector], performed: Performed, *, prompt: str,
           seed: int, settings: SamplingSettings, smoothing_ms: float, frames: int,
           window_frames: int | None = None, reprime_frames: int | None = None) -> Replayed:
    steerer = Steerer(handle)
    for v in vectors:
        steerer.add(v, alpha=0.0)
    stream = MusicStream(handle, prompt, seed=seed, settings=settings, steerer=steerer,
                         window_frames=window_frames, reprime_frames=reprime_frames)
    performance = Performance(stream, steerer, smoothing_ms=smoothing_ms)
    schedule: list[tuple[int, Sequence[Change]]] = performed.schedule
    with stream.steering():
        performance.run_to_frames(frames, schedule)
    codes = stream.codes[:, :, :frames].cpu().contiguous()
    sha = hashlib.sha256(codes.numpy().tobytes()).hexdigest()
    matches = None if performed.codes_sha256 is None or performed.frames != frames else sha == performed.codes_sha256
    return Replayed(decode(handle, codes)[0], frames, sha, matches)


@dataclass
class StemReplayed:
    """One stem of a replayed set: its audio (as generated: the live mix's mute and chain are
    not the tokens'), its token hash, and whether it matches the log's."""

    name: str
    audio: np.ndarray  # [channels, samples]
    codes_sha256: str
    matches_log: bool | None


def replay_stems(handle: MusicGenHandle, vectors: Sequence[SteeringVector], performed: Performed, *,
                 settings: SamplingSettings, smoothing_ms: float, frames: int, window_frames: int | None = None,
                 reprime_frames: int | None = None) -> list[StemReplayed]:
    """A set of stems played again in the same layout (the header's ``stems``, in row order):
    the same batch, each stem's prompt, seed and sampling settings, every change on its row at its step."""
    stems = performed.header["stems"]
    steerer = Steerer(handle)
    for v in vectors:
        steerer.add(v, alpha=0.0)
    stream = StemStream(handle, [str(s["prompt"]) for s in stems], seeds=[int(s["seed"]) for s in stems],
                        settings=settings, steerer=steerer, window_frames=window_frames, reprime_frames=reprime_frames)
    for row, stem in enumerate(stems):  # a stem's own sampling settings from its set file (older logs: none)
        stream.set_row_settings(row, settings_from_controls(stem.get("gen") or {}, settings))
    performance = StemPerformance(stream, steerer, smoothing_ms=smoothing_ms)
    with stream.steering():
        performance.run_to_frames(frames, performed.schedule)
    codes = stream.codes[:, :, :frames].cpu().contiguous()
    audio = decode(handle, codes)
    out = []
    same_length = performed.frames == frames
    for row, stem in enumerate(stems):
        sha = hashlib.sha256(codes[row].numpy().tobytes()).hexdigest()
        name = performed.stem_rows[row] if len(performed.stem_rows) == len(stems) else str(stem["name"])
        if SPARE_RE.fullmatch(name) and stem.get("spare"):  # a spare row no stem ever took: nothing to hear
            continue
        logged = performed.rows_sha256[row] if len(performed.rows_sha256) == len(stems) \
            else performed.stems_sha256.get(name)
        if logged is None and len(stems) == 1:  # one row: the whole batch's hash is the stem's
            logged = performed.codes_sha256
        out.append(StemReplayed(name, audio[row], sha, None if logged is None or not same_length else sha == logged))
    return out


__all__ = ["Performed", "Replayed", "StemReplayed", "midi_schedule", "read_log", "replay", "replay_stems"]
