"""The beat warp (bridge/live/beat_warp.py): each beat the model plays, laid on the host's grid.

Against an independent reading: the test knows where it put every hit of its synthetic
drummer, and finds them again in the warped audio by their waveform (a matched filter),
not by the warp's onset detector.
"""

from __future__ import annotations

import numpy as np
import pytest

from bridge.clock.clock import ClockSnapshot
from bridge.clock.grid import Grid
from bridge.live.beat_warp import BeatWarp, Pulses, fit, loop_length
from bridge.live.target_loop import TargetAsk, TargetLoop

RATE = 32000
BLOCK = 2560  # a toy decode chunk: 4 frames of 640 samples


def hit_wave() -> np.ndarray:
    """A drum hit: 12 ms of decaying noise (seeded), the same every time."""
    n = int(0.012 * RATE)
    return (np.random.default_rng(7).standard_normal(n) * np.exp(-np.arange(n) / (0.003 * RATE))).astype(np.float32)


def drummer(bpm: float, seconds: float, jitter_s: float = 0.0, seed: int = 0,
            first_s: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Eighths at ``bpm``, each hit up to ``jitter_s`` early or late (not accumulating), over a
    steady 250 Hz bed (a held note's whole cycles): the audio and the hits' sample times."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    audio = 0.05 * np.sin(2 * np.pi * 250 * np.arange(n) / RATE).astype(np.float32)
    eighth = 30.0 / bpm * RATE
    hits = []
    t = first_s * RATE
    wave = hit_wave()
    while t + len(wave) < n:
        at = int(t + rng.uniform(-jitter_s, jitter_s) * RATE)
        audio[at:at + len(wave)] += wave
        hits.append(at)
        t += eighth
    return audio, np.array(hits)


def found_hits(audio: np.ndarray) -> np.ndarray:
    """Where the hit's waveform is in ``audio``: peaks of a matched filter, 40 ms apart at least."""
    wave = hit_wave()
    score = np.correlate(audio, wave, mode="valid") / float(wave @ wave)
    peaks = np.flatnonzero((score[1:-1] > 0.6) & (score[1:-1] >= score[:-2]) & (score[1:-1] >= score[2:])) + 1
    kept: list[int] = []
    for p in peaks:
        if not kept or p - kept[-1] > 0.04 * RATE:
            kept.append(int(p))
        elif score[p] > score[kept[-1]]:
            kept[-1] = int(p)
    return np.array(kept)


def warped(audio: np.ndarray, host_bpm: float, warp: BeatWarp | None = None) -> tuple[np.ndarray, BeatWarp]:
    warp = warp or BeatWarp(RATE, 1.0)
    pulses = Pulses.of_grid(Grid.start(RATE, host_bpm))
    out, at = [], 0
    for a in range(0, len(audio), BLOCK):
        block = warp.process(audio[None, a:a + BLOCK], at, pulses, host_bpm)
        at += block.shape[-1]
        out.append(block[0])
    return np.concatenate(out), warp


@pytest.mark.parametrize(("model_bpm", "host_bpm"), [(100.0, 120.0), (120.0, 90.0), (93.0, 150.0)])
def test_every_hit_lands_on_the_hosts_eighths_and_none_is_lost(model_bpm, host_bpm):
    audio, hits = drummer(model_bpm, 12.0, jitter_s=0.012)
    out, warp = warped(audio, host_bpm)
    found = found_hits(out)
    eighth = 30.0 / host_bpm * RATE
    offsets = (found - np.round(found / eighth) * eighth) / RATE
    # The warp cuts a few ms before each onset (its attack kept whole): hits land within 12 ms.
    assert np.all(np.abs(offsets) < 0.012), np.abs(offsets).max()
    # One slice a hit, one eighth a slice: the hits are the drummer's, none dropped or doubled
    # (the last few are still held, waiting for the onset after them).
    assert len(hits) - 3 <= len(found) <= len(hits)
    assert np.all(np.diff(np.round(found / eighth)) == 1)
    assert warp.slices >= len(found) - 2


def test_a_beat_already_on_the_grid_plays_untouched():
    host = 120.0
    shifted, _ = drummer(host, 6.0, first_s=30.0 / host)  # every hit on an eighth of the grid
    out, warp = warped(shifted, host)
    n = len(out)
    assert n > 0.8 * len(shifted)
    assert np.array_equal(out, shifted[:n])  # bit for bit: a slice of its own length is left as it is
    assert warp.slices > 0 and warp.stretch == pytest.approx(1.0)


def test_no_onset_plays_through_at_once_and_nothing_is_lost():
    bed = (0.05 * np.sin(2 * np.pi * 250 * np.arange(3 * RATE) / RATE)).astype(np.float32)
    out, warp = warped(bed, 120.0)
    assert warp.slices == 0
    held = warp.held_samples
    assert len(out) + held == len(bed)
    assert held <= warp.margin_s * RATE + BLOCK  # only where an onset might still be found
    assert np.array_equal(out, bed[:len(out)])
    assert np.array_equal(warp.flush()[0], bed[len(out):])  # what it held comes back whole


def test_a_slice_with_no_onset_after_it_gives_up_and_plays_on_unwarped():
    hits, _ = drummer(100.0, 2.0, first_s=0.1)
    phase = 2 * np.pi * 250 * len(hits) / RATE  # the bed goes on where the drummer's ended
    bed = (0.05 * np.sin(phase + 2 * np.pi * 250 * np.arange(3 * RATE) / RATE)).astype(np.float32)
    out, warp = warped(np.concatenate([hits, bed]), 120.0)
    assert warp.slices >= 5 and warp.passed == 1
    assert warp.held_samples <= warp.margin_s * RATE + BLOCK  # it does not wait for ever
    assert np.array_equal(out[-RATE:], bed[len(bed) - warp.held_samples - RATE:len(bed) - warp.held_samples])


def test_a_gap_in_the_ring_drops_what_was_held_for_before_it():
    audio, _ = drummer(100.0, 3.0)
    warp = BeatWarp(RATE, 1.0)
    pulses = Pulses.of_grid(Grid.start(RATE, 120.0))
    at = 0
    for a in range(0, len(audio), BLOCK):
        at += warp.process(audio[None, a:a + BLOCK], at, pulses, 120.0).shape[-1]
    assert warp.held_samples > 0
    warp.process(audio[None, :BLOCK], at + 5 * RATE, pulses, 120.0)  # the engine fed 5 s of silence: a stop
    assert warp.held_samples <= BLOCK and warp.slices == 0


def test_fit_cuts_with_a_fade_and_holds_a_periodic_end_seamlessly():
    t = np.arange(4000) / RATE
    tone = np.sin(2 * np.pi * 250 * t).astype(np.float32)[None]  # 128 samples a period
    assert loop_length(tone, RATE) % 128 == 0
    cut = fit(tone, 1000, 128, 0)
    assert cut.shape == (1, 1000)
    assert np.array_equal(cut[:, :872], tone[:, :872]) and abs(cut[0, -1]) < 1e-6
    held = fit(tone[:, :2000], 3000, 128, loop_length(tone[:, :2000], RATE))
    assert held.shape == (1, 3000)
    # Looped at a whole period, the hold continues the tone itself (up to the crossfades and
    # the fade at the end).
    assert np.max(np.abs(held[0, :2800] - tone[0, :2800])) < 1e-3
    assert fit(tone, 4000, 128, 0) is tone


def test_the_loops_place_stage_passes_audio_untouched_unless_the_lock_warps():
    loop = TargetLoop({"tempo": (-1.0, 1.0)}, RATE, 1.0)
    grid = Grid.start(RATE, 120.0)
    clock = ClockSnapshot("internal", grid, True, grid.last.meter, grid.last.bpm)
    audio, _ = drummer(100.0, 1.0)
    block = audio[None, :BLOCK]
    out, held = loop.place(block, 0, clock)
    assert out is block and held == 0  # no lock: the same array, bit-identical
    loop.ask(TargetAsk("tempo", warp=True), {})
    assert not loop.warping  # the warp plays while the lock is on
    loop.ask(TargetAsk("tempo", lock=True), {"tempo": 0.0})
    assert loop.warping and loop.status()["warp"]["on"]
    assert loop.reserve_s() > 0.125  # half an eighth at 120 BPM and the warp's margin
    at = 0
    for a in range(0, len(audio), BLOCK):
        out, held = loop.place(audio[None, a:a + BLOCK], at, clock)
        at += out.shape[-1]
    kept = loop.warp.held_samples
    assert kept > 0
    loop.ask(TargetAsk("tempo", lock=False), {})
    out, held = loop.place(block, at, clock)  # the lock off: what the warp held plays first, unwarped
    assert out.shape[-1] == kept + BLOCK and held == kept  # the block's first sample comes after them
    assert not loop.status()["warp"]["on"] and loop.reserve_s() == 0.0


def test_a_tempo_target_warps_onto_a_grid_at_its_setpoint_and_a_new_one_moves_it_at_once():
    """No lock: a tempo target's beats go onto a grid of its own at its setpoint, not the
    clock's (which plays 120 here); a new setpoint changes that grid's tempo where the next
    block lands, and every hit after it is on the new tempo's eighths. The loop's sensor
    still hears the model's own tempo, as the engine hands it each block (where it lands)."""
    loop = TargetLoop({"tempo": (-1.0, 1.0)}, RATE, 1.0, warp=True)
    grid = Grid.start(RATE, 120.0)
    clock = ClockSnapshot("internal", grid, True, grid.last.meter, grid.last.bpm)
    audio, _ = drummer(100.0, 16.0, jitter_s=0.012)
    block = audio[None, :BLOCK]
    assert not loop.warping and loop.place(block, 0, clock)[0] is block  # no target: untouched
    loop.ask(TargetAsk("tempo", setpoint=130.0), {"tempo": 0.0})
    assert loop.warping and loop.status()["warp"]["grid"] == "target"
    out, at, step_at = [], 0, None
    for a in range(0, len(audio), BLOCK):
        if step_at is None and a >= 7 * RATE:
            loop.ask(TargetAsk("tempo", setpoint=80.0), {"tempo": 0.0})
            step_at = at
        block_out, held = loop.place(audio[None, a:a + BLOCK], at, clock)
        loop.heard(audio[a:a + BLOCK], at + held, clock)  # as Engine._produce_chunk: AudioPath.push's sample
        at += block_out.shape[-1]
        out.append(block_out[0])
    played = np.concatenate(out)
    target = loop.stage.target_grid
    assert target is not None and [float(s.bpm) for s in target.segments] == [130.0, 80.0]
    assert target.segments[1].sample == step_at  # the new tempo from the block after the ask
    found = found_hits(played)
    eighths = np.array([float(target.beat_at(int(f))) * 2 for f in found])
    offsets = (eighths - np.round(eighths)) * np.array([30.0 / float(target.segment_at(int(f)).bpm) for f in found])
    assert np.all(np.abs(offsets) < 0.012), np.abs(offsets).max()
    before, after = found[found < step_at], found[found > step_at]
    assert len(before) > 20 and len(after) > 10
    # One eighth a hit: 130 BPM before the step, 80 after it (the clock's 120 plays no part).
    assert np.allclose(np.diff(before[2:]) / RATE, 30.0 / 130.0, atol=0.012)
    assert np.allclose(np.diff(after) / RATE, 30.0 / 80.0, atol=0.012)
    assert loop.reserve_s() > 0.5 * 30.0 / 80.0  # half an eighth of the slower of the model and the grid
    knob = loop.status()["target_knobs"]["tempo"]
    assert knob["updates"] >= 10 and knob["measured"] == pytest.approx(100.0, rel=0.05)  # the model's, unwarped
    loop.ask(TargetAsk("tempo"), {"tempo": 0.0})  # the target off: what the warp held plays, unwarped
    kept = loop.warp.held_samples
    out2, held = loop.place(block, at, clock)
    assert not loop.warping and held == kept and out2.shape[-1] == kept + BLOCK
    assert loop.stage.target_grid is None and not loop.status()["warp"]["on"]


# --- in a running toy server: serve --tempo-lock --beat-warp, judged on the recording ---------

def test_a_locked_toy_with_the_warp_plays_its_beats_on_the_clocks_grid(tmp_path):
    """The toy plays about 90 BPM on serve's prompt; the host asks 120. With the warp the
    recording's onsets (librosa's, not the warp's detector) sit on the clock's eighths; the
    loop steers toward the host's tempo, and /status/json shows the warp at work. The log
    holds the ask, and the tokens replay bit-identically."""
    import json

    import librosa

    from bridge.live.commands import Origin
    from bridge.live.options import EngineSettings
    from bridge.live.serve import ServeOptions, Server
    from tests import realparts

    options = ServeOptions(model="toy", vectors=["steering_core/toy/vectors"], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs="off", bpm=120.0,
                           seed=0, record=str(tmp_path / "set.wav"), engine=EngineSettings(tempo_lock=True))
    server = Server(options)
    server.start()
    try:
        server.commands.run("/sync/lock/warp", [1], Origin("test"))
        assert realparts.wait_for(lambda: (server.status()["warp"].get("slices") or 0) >= 24
                                  and server.status()["frames_generated"] >= 9 * 50, 60.0, every=0.1)  # 9 s
        warp = server.status()["warp"]
        assert warp["on"] and warp["grid"] == "clock" and warp["model_bpm"] is not None and warp["held_ms"] < 1000
        assert server.status()["lock"] in ("acquiring", "locked", "out of range")
        # The loop's sensor hears the model's own audio while the warp moves it (a beat an update).
        assert server.status()["target_knobs"]["tempo"]["updates"] >= 5
        grid = server.clock.snapshot.grid
    finally:
        server.stop()
    audio, rate = librosa.load(str(tmp_path / "set.wav"), sr=None, mono=True)
    onsets = librosa.onset.onset_detect(y=audio, sr=rate, hop_length=128, units="samples")
    eighths = np.array([float(grid.beat_at(int(s))) * 2 for s in onsets if s > 3.0 * rate])
    off_ms = np.abs(eighths - np.round(eighths)) * 250.0  # an eighth at 120 BPM is 250 ms
    assert len(off_ms) >= 10
    # Hits at random would lie a median of 62 ms off; unwarped, this seed's lie 60-70 ms off.
    assert np.median(off_ms) < 20.0, np.median(off_ms)
    lines = [json.loads(x) for x in (tmp_path / "set.performance.jsonl").read_text().splitlines()]
    assert any(r.get("target") == {"concept": "tempo", "warp": True} for r in lines)
    realparts.assert_replays_bit_identically(tmp_path / "set.performance.jsonl", tmp_path)


def test_a_toy_tempo_target_with_the_warp_plays_its_setpoint_and_a_new_one_at_once(tmp_path):
    """serve --beat-warp, no lock, the clock at 120: /steer/tempo/target 100, then 140 (beyond
    the toy's reach: the loop says out of range). The recording's onsets (librosa's) sit on the
    eighths of a grid at the setpoint, before the step and from a second after it."""
    import librosa

    from bridge.live.commands import Origin
    from bridge.live.options import EngineSettings
    from bridge.live.serve import ServeOptions, Server
    from tests import realparts

    options = ServeOptions(model="toy", vectors=["steering_core/toy/vectors"], osc_port=0, audio_out="none",
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, cuda_graphs="off", bpm=120.0,
                           seed=0, record=str(tmp_path / "set.wav"), engine=EngineSettings(beat_warp=True))
    server = Server(options)
    server.start()
    try:
        server.commands.run("/steer/tempo/target", [100.0], Origin("test"))
        assert realparts.wait_for(lambda: server.status()["frames_generated"] >= 6 * 50, 60.0, every=0.1)
        assert server.status()["warp"]["grid"] == "target"
        server.commands.run("/steer/tempo/target", [140.0], Origin("test"))
        step = server.clock.heard_now() or 0
        assert realparts.wait_for(lambda: server.status()["frames_generated"] >= 12 * 50, 60.0, every=0.1)
        assert server.status()["target_knobs"]["tempo"]["updates"] >= 5
        grid = server.engine.targets.stage.target_grid
    finally:
        server.stop()
    assert grid is not None and [float(s.bpm) for s in grid.segments] == [100.0, 140.0]
    audio, rate = librosa.load(str(tmp_path / "set.wav"), sr=None, mono=True)
    onsets = librosa.onset.onset_detect(y=audio, sr=rate, hop_length=128, units="samples")
    changed = int(grid.segments[1].sample)
    assert changed >= step  # the new tempo from where the next block was placed, after the ask

    def off_ms(samples: list[int]) -> float:
        eighths = np.array([float(grid.beat_at(int(s))) * 2 for s in samples])
        ms = np.abs(eighths - np.round(eighths)) * np.array([30000.0 / float(grid.segment_at(int(s)).bpm) for s in samples])
        return float(np.median(ms))

    before = [s for s in onsets if 2.0 * rate < s < changed]
    after = [s for s in onsets if s > changed + rate]
    assert len(before) >= 8 and len(after) >= 8
    # Hits at random would lie a median of an eighth / 4 off: 75 ms at 100 BPM, 54 at 140.
    assert off_ms(before) < 20.0 and off_ms(after) < 20.0, (off_ms(before), off_ms(after))


def test_the_warp_on_a_set_of_stems_is_refused_in_one_line():
    from bridge.live.options import EngineSettings
    from bridge.live.serve import ServeOptions, Server
    from steering_core.errors import UserError

    options = ServeOptions(model="toy", vectors=["steering_core/toy/vectors"], osc_port=0, audio_out="none",
                           status_line=False, stems=["drums=punchy drums", "lead=a bright lead"],
                           engine=EngineSettings(beat_warp=True))
    with pytest.raises(UserError, match="one stream"):
        Server(options)


# --- through an AudioPath, at the model's 32 kHz into a 48 kHz output --------------------------

class PathRig:
    """An AudioPath with the loop's warp as its stage, a 48 kHz ring read back as it fills."""

    def __init__(self) -> None:
        from bridge.live.audio_path import AudioPath
        from bridge.live.chains import load_chain
        from bridge.live.ring import Ring

        self.grid = Grid.start(48000, 120.0)
        self.clock = ClockSnapshot("internal", self.grid, True, self.grid.last.meter, self.grid.last.bpm)
        self.loop = TargetLoop({"tempo": (-1.0, 1.0)}, RATE, 1.5, warp=True)
        self.loop.ask(TargetAsk("tempo", lock=True), {"tempo": 0.0})
        self.path = AudioPath(RATE, 48000, Ring(4 * 48000, 1), load_chain("clean"))
        self.path.stage = lambda audio, at: self.loop.place(audio, at, self.clock)
        self.path.reserve_s = self.loop.reserve_s
        self.out: list[np.ndarray] = []

    def push(self, audio: np.ndarray) -> int:
        at = self.path.push(audio[None])
        block = np.zeros((self.path.ring.fill, 1), np.float32)
        self.path.ring.read_into(block)
        self.out.append(block[:, 0])
        return at

    def played(self) -> np.ndarray:
        return np.concatenate(self.out)


def first_loud(audio: np.ndarray, threshold: float = 0.3, quiet: float = 0.04, rate: int = 48000) -> np.ndarray:
    """Samples where the level first passes ``threshold`` after ``quiet`` seconds below it."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return loud[np.concatenate([[True], np.diff(loud) > quiet * rate])] if len(loud) else loud


def test_through_the_path_at_48_khz_the_hits_land_on_the_rings_eighths():
    rig = PathRig()
    audio, hits = drummer(100.0, 8.0, jitter_s=0.01)
    for a in range(0, len(audio), BLOCK):
        rig.push(audio[a:a + BLOCK])
    found = first_loud(rig.played())
    eighth = 30.0 / 120.0 * 48000
    offsets = (found - np.round(found / eighth) * eighth) / 48000
    assert len(found) >= len(hits) - 3
    assert np.all(np.abs(offsets) < 0.008), np.abs(offsets).max()  # the resampler and the 3 ms lead
    assert rig.path.reserve > 0 and rig.path.headroom > 0


def test_the_path_says_where_a_block_lands_after_the_warp_lets_go_and_after_a_gap():
    rig = PathRig()
    audio, _ = drummer(100.0, 2.0)
    for a in range(0, len(audio), BLOCK):
        rig.push(audio[a:a + BLOCK])
    held = rig.loop.warp.held_samples
    assert held > 0
    rig.loop.ask(TargetAsk("tempo", lock=False), {})
    click = np.zeros(BLOCK, np.float32)
    click[0] = 1.0
    before = len(rig.played())
    at = rig.push(click)  # the warp's held audio plays first, then the click
    rig.push(np.zeros(BLOCK, np.float32))
    peak = before + int(np.argmax(np.abs(rig.played()[before:])))
    assert abs(peak - at) <= 4, (peak, at)  # the resampler's smear
    # Warping again, then a stop: the engine feeds the ring silence; the warp's held audio was
    # for before it, and the next block is the first sample after the gap.
    rig.loop.ask(TargetAsk("tempo", lock=True), {"tempo": 0.0})
    for a in range(0, len(audio), BLOCK):
        rig.push(audio[a:a + BLOCK])
    assert rig.loop.warp.held_samples > 0
    rig.path.silence(48000)
    written = rig.path.ring.written
    at = rig.push(audio[:BLOCK])
    assert at == written + rig.path.delay


def test_before_the_models_tempo_is_read_a_flam_does_not_take_an_eighth():
    # A hit and a second one 90 ms after it (a flam), at the host's own tempo: the flam stays in
    # its hit's slice, and every hit keeps its eighth, from the first second on.
    audio, hits = drummer(120.0, 3.0, first_s=0.25)
    wave = hit_wave()
    for h in hits:
        at = h + int(0.09 * RATE)
        audio[at:at + len(wave)] += 0.8 * wave
    out, _ = warped(audio, 120.0)
    found = found_hits(out)
    eighth = 30.0 / 120.0 * RATE
    on_grid = found[np.abs(found - np.round(found / eighth) * eighth) < 0.012 * RATE]
    assert len(hits) - 3 <= len(on_grid) <= len(hits)  # a flam on an eighth of its own: one too many
    assert np.all(np.diff(np.round(on_grid / eighth)) == 1)
    flams = found[np.abs((found - on_grid[0]) % eighth - 0.09 * RATE) < 0.003 * RATE]
    assert len(flams) >= len(hits) - 3  # each one heard, 90 ms after its hit: not cut away
