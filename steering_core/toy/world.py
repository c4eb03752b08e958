"""A synthetic musical world whose concepts are known by construction.

The ``toy`` model (``toy/model.py``) is trained on this world, so that steering can be shown,
by numbers, to move what it should. A clip is a *score*: four codebooks of frame codes
at 50 frames/s, one code per 20 ms frame, as MusicGen's codec would produce:

=========  ===================================================================
codebook   what a code means
=========  ===================================================================
0 drums    (kick | snare | hat, frames since the hit, tempo bucket), then (tail, tempo
           bucket) until the next hit: the kit's room rings at every frame, in a
           pitch set by the tempo bucket (six, 20 BPM each)
1 lead     rest, or (pitch, brightness): an additive tone, 7 harmonic roll-offs
2 piano    silence, or (major | minor chord, frames since it was struck)
3 bass     silence, or (pitch, frames since it was plucked; the tail sustains)
=========  ===================================================================

and the audio is the sum, frame by frame, of one 640-sample waveform per codebook code
(``FrameTables``). Every pitch is a multiple of 50 Hz, so every partial completes whole
cycles in a frame and a held note is the same waveform frame after frame; every
waveform starts and ends at zero, so frames join without clicks. That makes the audio
an exact function of the codes, which is what lets a small EnCodec learn to encode and
decode it (``toy/training.py``), and makes each concept measurable on the audio:

* **tempo** (60-180 BPM): one drum hit per eighth note, so the onset rate is BPM / 30;
  every drum frame also sounds the tempo's bucket (the room, ``ROOM_TONES``), as a real
  track's reverb and decays are set to its tempo, so the tempo is in each frame's codes;
* **brightness** (0-6): the lead's harmonic roll-off, so the spectral centroid follows it;
* **mood**: major (G B D) or minor (B D F#) pitch sets for lead, piano and bass;
* **piano** and **bass** presence.

``Params`` holds one clip's settings; ``caption`` words them with the shipped concept
presets' own words (``presets/concepts``), so ``extract --concept tempo`` asks the toy
model exactly what it was trained to hear; ``write_labelled_folders`` renders labelled
clips for ``extract --data`` and ``analyze --data``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 32000
FRAME_RATE = 50
HOP = SAMPLE_RATE // FRAME_RATE  # 640 samples per frame
CODEBOOK_SIZE = 128
NUM_CODEBOOKS = 4
DRUMS, LEAD, PIANO, BASS = range(NUM_CODEBOOKS)

BPM_RANGE = (60.0, 180.0)
FAST_BPM = (140.0, 180.0)
SLOW_BPM = (60.0, 90.0)
BRIGHTNESS_LEVELS = 7
BRIGHT_LEVELS = (5, 6)
DARK_LEVELS = (0, 1)

# --- the code vocabulary ------------------------------------------------------------------
#: Drum voices and how many frames each sounds: all shorter than the fastest tempo's eighth
#: note (8.3 frames), so every hit is followed by the room's tail alone.
DRUM_FRAMES = {"kick": 7, "snare": 6, "hat": 5}
#: Tempo buckets (BPM, lower bound inclusive), 20 BPM wide: SLOW_BPM lies in the first two,
#: FAST_BPM in the last two.
TEMPO_BUCKETS = ((60.0, 80.0), (80.0, 100.0), (100.0, 120.0), (120.0, 140.0), (140.0, 160.0), (160.0, 180.0))
#: The kit plays in a room whose gated reverb is set to the tempo, as producers set reverb
#: and delay times to the track's tempo: a steady, quiet tone that rings from hit to hit, one
#: pitch per bucket (odd multiples of 50 Hz that no instrument's harmonics reach, well below
#: every clip's spectral centroid, so it scales centroids alike and leaves the bright/dark
#: contrast nearly whole; a 1750 Hz bed cost 8 % of it). Every drum code is (voice,
#: frames since the hit, bucket) while a voice sounds, then (tail, bucket) until the next
#: hit: every frame of codebook 0 says the tempo bucket, in codes that sound different, so
#: the codec can read them back from audio and labelled fast and slow audio differ at every
#: frame in a tempo feature, not only in how many frames a hit was recent.
#: *When* the next hit falls is not in the codes: the model counts the frames since the hit,
#: and each gap is the tempo's eighth note give or take a frame (a human drummer). The
#: bucket is the clip's, and the model states it in every drum code from the clip's first
#: frame on, so the caption's tempo is a choice made at once and readable at every frame
#: (with the countdown, the first gap was the first tempo choice). Two earlier designs
#: failed: codes counting *up* to the gap length taught the model to copy the last gap and
#: ignore tempo words; silent codes counting *down* to the next hit (one timing choice per
#: beat) were all silence, so the codec could not read them back (a 76 BPM clip came back
#: with a third of them right), and mean "fast minus slow" activations said mostly "a hit
#: is recent", which steered slower. Three buckets (40 BPM each) made steering step-like.
TEMPO_BUCKET_COUNT = len(TEMPO_BUCKETS)
ROOM_TONES = (350, 550, 650, 850, 950, 1050)
ROOM_LEVEL = 0.07
#: Lead pitches (Hz): G4 B4 D5 F#5 G5 B5 D6 F#6 in just intonation over 50 Hz.
LEAD_PITCHES = (400, 500, 600, 750, 800, 1000, 1200, 1500)
MAJOR_LEAD = (400, 500, 600, 800, 1000, 1200)
MINOR_LEAD = (500, 600, 750, 1000, 1200, 1500)
#: Piano chords (Hz): G major and B minor, struck and left to decay.
PIANO_CHORDS = {"major": (400, 500, 600), "minor": (500, 600, 750)}
PIANO_FRAMES = 24
#: Bass pitches (Hz): G2 D3 G3 B3; a pluck decays for BASS_FRAMES - 1 frames, then sustains.
BASS_PITCHES = (100, 150, 200, 250)
MAJOR_BASS = (100, 150, 200)
MINOR_BASS = (150, 250)
BASS_FRAMES = 12
#: Keeps the loudest mix (kick, bass, chord and a bright lead at once) below full scale.
MASTER_GAIN = 0.42


def tempo_bucket(bpm: float) -> int:
    """The bucket of TEMPO_BUCKETS that ``bpm`` falls in (below and above the range: the ends)."""
    for i, (_, hi) in enumerate(TEMPO_BUCKETS[:-1]):
        if bpm < hi:
            return i
    return TEMPO_BUCKET_COUNT - 1


_VOICE_CODES = sum(DRUM_FRAMES.values())  # (voice, age) pairs per bucket


def drum_code(voice: str, age: int, bucket: int) -> int:
    """Codebook 0 with ``voice`` sounding, ``age`` frames after its hit, in tempo ``bucket``."""
    if not 0 <= bucket < TEMPO_BUCKET_COUNT:
        raise ValueError(f"tempo bucket {bucket} outside 0..{TEMPO_BUCKET_COUNT - 1}")
    base = 1 + bucket * _VOICE_CODES
    for name, frames in DRUM_FRAMES.items():
        if name == voice:
            if not 0 <= age < frames:
                raise ValueError(f"{voice} sounds for {frames} frames, not {age + 1}")
            return base + age
        base += frames
    raise KeyError(voice)


def tail_code(bucket: int) -> int:
    """Codebook 0 with no voice sounding, only the room of tempo ``bucket``."""
    if not 0 <= bucket < TEMPO_BUCKET_COUNT:
        raise ValueError(f"tempo bucket {bucket} outside 0..{TEMPO_BUCKET_COUNT - 1}")
    return 1 + TEMPO_BUCKET_COUNT * _VOICE_CODES + bucket


def drum_bucket(code: int) -> int | None:
    """The tempo bucket a drum code plays in (None for code 0, no drums at all)."""
    if code <= 0:
        return None
    if code <= TEMPO_BUCKET_COUNT * _VOICE_CODES:
        return (code - 1) // _VOICE_CODES
    return code - 1 - TEMPO_BUCKET_COUNT * _VOICE_CODES


def is_hit(code: int) -> bool:
    """Whether a drum code is a voice's first frame (a hit)."""
    return code in _HIT_CODES


def lead_code(pitch: int, brightness: int) -> int:
    return 1 + LEAD_PITCHES.index(pitch) * BRIGHTNESS_LEVELS + brightness


def piano_code(chord: str, age: int) -> int:
    return 1 + list(PIANO_CHORDS).index(chord) * PIANO_FRAMES + age


def bass_code(pitch: int, age: int) -> int:
    return 1 + BASS_PITCHES.index(pitch) * BASS_FRAMES + min(age, BASS_FRAMES - 1)


_HIT_CODES = frozenset(drum_code(v, 0, b) for v in DRUM_FRAMES for b in range(TEMPO_BUCKET_COUNT))
if tail_code(TEMPO_BUCKET_COUNT - 1) >= CODEBOOK_SIZE:
    raise AssertionError("the drum vocabulary does not fit the codebook")


def lead_brightness(code: int) -> int | None:
    """The brightness a lead code plays at (None for a rest)."""
    return None if code == 0 else (code - 1) % BRIGHTNESS_LEVELS


# --- the sounds ---------------------------------------------------------------------------
def _t(frames: int) -> np.ndarray:
    return np.arange(frames * HOP) / SAMPLE_RATE


def _frames(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, HOP)


def _harmonic(freq: float, t: np.ndarray, rolloff: float, max_partials: int = 24) -> np.ndarray:
    """Sum of sine partials h·freq (below 15 kHz) with amplitude h^-rolloff, unit RMS."""
    n = max(1, min(max_partials, int(15000 // freq)))
    h = np.arange(1, n + 1)
    amp = h.astype(np.float64) ** -rolloff
    wave = (amp[:, None] * np.sin(2 * np.pi * freq * h[:, None] * t[None, :])).sum(axis=0)
    return wave / math.sqrt(0.5 * float((amp ** 2).sum()))


def _drum(voice: str, rng: np.random.Generator) -> np.ndarray:
    frames = DRUM_FRAMES[voice]
    t = _t(frames)
    if voice == "kick":  # a pitch sweep from 160 to 50 Hz (phase = integral of frequency)
        freq = 50 + 110 * np.exp(-t / 0.03)
        phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
        x = 0.9 * np.sin(phase) * np.exp(-t / 0.05)
    elif voice == "snare":  # frozen noise, low-passed by a 12-tap smoother, plus a 200 Hz body
        noise = np.convolve(rng.standard_normal(t.size), np.hanning(12) / np.hanning(12).sum() * 3.0, mode="same")
        x = 0.35 * noise * np.exp(-t / 0.045) + 0.5 * np.sin(2 * np.pi * 200 * t) * np.exp(-t / 0.035)
    else:  # hat: frozen noise, band-passed (difference of smoothers), quiet and short
        noise = rng.standard_normal(t.size + 8)
        smooth, smoother = (np.convolve(noise, np.ones(n) / n, mode="valid")[:t.size] for n in (2, 8))
        band = smooth - smoother
        x = 0.12 * band * np.exp(-t / 0.035)
    x *= np.minimum(1.0, (frames * HOP - np.arange(t.size)) / (2 * HOP))  # fade out over the last 2 frames
    return x


@dataclass(frozen=True)
class FrameTables:
    """One 640-sample waveform per code of each codebook: [NUM_CODEBOOKS, CODEBOOK_SIZE, HOP]."""

    table: np.ndarray

    def render(self, codes: np.ndarray) -> np.ndarray:
        """Codes [K, T] -> mono audio [T * HOP]: each frame is the sum of its codes' waveforms."""
        codes = np.asarray(codes)
        frames = sum(self.table[k][codes[k]] for k in range(NUM_CODEBOOKS))
        return np.asarray(frames, dtype=np.float32).reshape(-1)


@lru_cache(maxsize=1)
def frame_tables() -> FrameTables:
    """The world's sounds, built once (seeded: the same in every process)."""
    rng = np.random.default_rng(20261121)
    table = np.zeros((NUM_CODEBOOKS, CODEBOOK_SIZE, HOP))
    t1 = _t(1)
    voices = {voice: _frames(_drum(voice, rng)) for voice in DRUM_FRAMES}
    for bucket, tone in enumerate(ROOM_TONES):
        room = ROOM_LEVEL * np.sin(2 * np.pi * tone * t1)  # whole cycles: a seamless bed
        table[DRUMS, tail_code(bucket)] = room
        for voice, x in voices.items():
            for age in range(DRUM_FRAMES[voice]):
                table[DRUMS, drum_code(voice, age, bucket)] = x[age] + room
    for pitch in LEAD_PITCHES:
        for b in range(BRIGHTNESS_LEVELS):
            rolloff = 2.6 - 2.2 * b / (BRIGHTNESS_LEVELS - 1)  # 2.6: nearly a sine ... 0.4: buzzy
            table[LEAD, lead_code(pitch, b)] = 0.22 * _frames(_harmonic(pitch, t1, rolloff))[0]
    for chord, pitches in PIANO_CHORDS.items():
        t = _t(PIANO_FRAMES)
        x = sum(_harmonic(p, t, 1.6, 8) for p in pitches) * np.exp(-t / 0.18)
        x *= np.minimum(1.0, (PIANO_FRAMES * HOP - np.arange(t.size)) / (3 * HOP))
        x = _frames(0.07 * x)
        for age in range(PIANO_FRAMES):
            table[PIANO, piano_code(chord, age)] = x[age]
    for pitch in BASS_PITCHES:
        t = _t(BASS_FRAMES)
        env = 0.45 + 0.55 * np.exp(-t / 0.06)
        env[(BASS_FRAMES - 1) * HOP:] = env[(BASS_FRAMES - 1) * HOP]  # the sustain frame is level
        x = _frames(0.22 * _harmonic(pitch, t, 1.8, 6) * env)
        for age in range(BASS_FRAMES):
            table[BASS, bass_code(pitch, age)] = x[age]
    return FrameTables((MASTER_GAIN * table).astype(np.float32))


# --- clips ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """One clip's musical settings."""

    bpm: float
    brightness: int  # 0 (dark) .. 6 (bright)
    major: bool
    piano: bool
    bass: bool

    @staticmethod
    def random(rng: random.Random) -> Params:
        return Params(bpm=rng.uniform(*BPM_RANGE), brightness=rng.randrange(BRIGHTNESS_LEVELS),
                      major=rng.random() < 0.5, piano=rng.random() < 0.5, bass=rng.random() < 0.5)


#: Eighth-note drum pattern over a bar: kick, hat, snare, hat, kick, hat, snare, hat.
_PATTERN = ("kick", "hat", "snare", "hat", "kick", "hat", "snare", "hat")


def score(params: Params, frames: int, rng: random.Random) -> np.ndarray:
    """Codes [NUM_CODEBOOKS, frames] for ``params``, starting at a random point of a bar."""
    codes = np.zeros((NUM_CODEBOOKS, frames), dtype=np.int64)
    eighth = 30.0 * FRAME_RATE / params.bpm  # frames per eighth note
    # Every hit from a bar before the clip to one after it: eighth notes, each gap give or
    # take a frame, never shorter than the longest drum sound.
    i = rng.randrange(8)
    f = -round(rng.uniform(8, 16) * eighth)
    hits = []  # (frame, eighth index)
    while True:
        hits.append((f, i))
        if f >= frames:
            break
        f += max(max(DRUM_FRAMES.values()) + 1, round(eighth) + rng.choice((-1, 0, 0, 1)))
        i += 1
    bucket = tempo_bucket(params.bpm)
    lead_pitches = MAJOR_LEAD if params.major else MINOR_LEAD
    bass_pitches = MAJOR_BASS if params.major else MINOR_BASS
    chord = "major" if params.major else "minor"
    note = rng.choice(lead_pitches)
    shade = params.brightness
    for n, (f, i) in enumerate(hits[:-1]):
        stop = hits[n + 1][0]
        voice = _PATTERN[i % 8]
        for age in range(stop - f):
            if 0 <= f + age < frames:
                codes[DRUMS, f + age] = drum_code(voice, age, bucket) if age < DRUM_FRAMES[voice] else tail_code(bucket)
        if i % 2 == 0 or rng.random() < 0.3:  # the lead moves on quarter notes, sometimes eighths
            note = rng.choice(lead_pitches)
            # Each note is voiced a shade around the clip's brightness, so every note is a fresh
            # choice that the caption informs (not one choice at the start, then copies).
            shade = min(BRIGHTNESS_LEVELS - 1, max(0, params.brightness + rng.choice((-1, 0, 0, 1))))
        lead_stop = stop if rng.random() < 0.85 else f + max(1, (stop - f) // 2)  # a few staccato notes
        for g in range(max(f, 0), min(lead_stop, frames)):
            codes[LEAD, g] = lead_code(note, shade)
        if params.piano and i % 8 in (0, 5):
            for age in range(PIANO_FRAMES):
                if 0 <= f + age < frames:
                    codes[PIANO, f + age] = piano_code(chord, age)
        if params.bass and i % 2 == 0:
            pitch = bass_pitches[(i // 2) % len(bass_pitches)]
            bass_stop = hits[n + 2][0] if n + 2 < len(hits) else frames
            for age in range(bass_stop - f):
                if 0 <= f + age < frames:
                    codes[BASS, f + age] = bass_code(pitch, age)
    return codes


def render_clip(params: Params, seconds: float, seed: int) -> np.ndarray:
    """Mono audio [1, samples] of one clip."""
    codes = score(params, round(seconds * FRAME_RATE), random.Random(seed))
    return frame_tables().render(codes)[None]
