"""The toy world in words: captions in the concept presets' own words, training
examples (a caption and its score), and labelled clips for ``extract --data``.

``caption`` words a clip's ``Params`` with the shipped presets' words
(``presets/concepts``), so ``extract --concept tempo`` asks the toy model exactly what it
was trained to hear; ``write_labelled_folders`` renders minimal pairs of labelled clips.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from steering_core.errors import UserError
from steering_core.extract.concepts import available_concepts, load_concept
from steering_core.toy.world import BRIGHT_LEVELS, DARK_LEVELS, FAST_BPM, SAMPLE_RATE, SLOW_BPM, Params, render_clip, score


# --- captions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionWords:
    """The words each concept is spoken of with, read from the shipped concept presets."""

    fast: tuple[str, ...]
    slow: tuple[str, ...]
    bright: tuple[str, ...]
    dark: tuple[str, ...]
    happy: tuple[str, ...]
    sad: tuple[str, ...]
    with_piano: tuple[str, ...]
    without_piano: tuple[str, ...]
    templates: tuple[tuple[str, str, dict[str, tuple[str, ...]]], ...]  # (concept, template, slots)


_BASS_ON = ("with a deep bass line", "with bass", "over a bass groove", "with a walking bass")
_BASS_OFF = ("with no bass", "without bass", "with no low end")
_GENERIC = ("music", "a track", "an instrumental piece", "a loop", "a groove", "a tune")


@lru_cache(maxsize=1)
def caption_words() -> CaptionWords:

    presets = {name: load_concept(name) for name in ("tempo", "timbre", "mood", "piano")}
    templates = tuple((name, t, p.slots) for name, p in presets.items() for t in p.templates)
    return CaptionWords(
        fast=presets["tempo"].positive_words, slow=presets["tempo"].negative_words,
        bright=presets["timbre"].positive_words, dark=presets["timbre"].negative_words,
        happy=presets["mood"].positive_words, sad=presets["mood"].negative_words,
        with_piano=presets["piano"].positive_words, without_piano=presets["piano"].negative_words,
        templates=templates)


@dataclass(frozen=True)
class Said:
    """Which of a clip's settings its caption states (the others it leaves open)."""

    tempo: bool = False
    brightness: bool = False
    mood: bool = False
    piano: bool = False
    bass: bool = False


def _word(params: Params, concept: str, rng: random.Random) -> str:
    w = caption_words()
    if concept == "tempo":
        return rng.choice(w.fast if params.bpm >= FAST_BPM[0] else w.slow)
    if concept == "timbre":
        return rng.choice(w.bright if params.brightness in BRIGHT_LEVELS else w.dark)
    if concept == "mood":
        return rng.choice(w.happy if params.major else w.sad)
    if concept == "piano":
        return rng.choice(w.with_piano if params.piano else w.without_piano)
    return rng.choice(_BASS_ON if params.bass else _BASS_OFF)


def caption(params: Params, said: Said, rng: random.Random) -> str:
    """A caption that states what ``said`` marks, in a shipped preset's template when one fits.

    Slot fillers (genre, instrument, mood words of the piano preset) are free text the
    world does not act on, as in real captions; only the concept words carry meaning.
    """
    w = caption_words()
    stated = [c for c, on in (("tempo", said.tempo), ("timbre", said.brightness), ("mood", said.mood),
                              ("piano", said.piano), ("bass", said.bass)) if on]
    if not stated:
        return "" if rng.random() < 0.3 else rng.choice(_GENERIC)
    lead = rng.choice([c for c in stated if c != "bass"] or stated)
    fitting = [(t, slots) for c, t, slots in w.templates if c == lead]
    parts = []
    if fitting:
        template, slots = rng.choice(fitting)
        fills = {name: rng.choice(values) for name, values in slots.items() if "{" + name + "}" in template}
        parts.append(template.format(word=_word(params, lead, rng), **fills))
    else:
        parts.append(f"{rng.choice(_GENERIC)} {_word(params, lead, rng)}")
    rest = [c for c in stated if c != lead]
    rng.shuffle(rest)
    parts += [_word(params, c, rng) for c in rest]
    return ", ".join(parts)


def training_example(rng: random.Random, frames: int) -> tuple[str, np.ndarray, Params]:
    """A random clip for the language model: (caption, codes [K, frames], params).

    Each concept is stated with probability 0.55; a stated tempo or brightness is drawn
    from its labelled range, so the words mean what the presets say; an unstated one is
    drawn from the whole range, so a neutral prompt leaves it open.
    """
    said = Said(*(rng.random() < 0.55 for _ in range(5)))
    p = Params.random(rng)
    if said.tempo:
        p = replace(p, bpm=rng.uniform(*(FAST_BPM if rng.random() < 0.5 else SLOW_BPM)))
    if said.brightness:
        p = replace(p, brightness=rng.choice(BRIGHT_LEVELS if rng.random() < 0.5 else DARK_LEVELS))
    return caption(p, said, rng), score(p, frames, rng), p


# --- labelled folders -------------------------------------------------------------------------
#: For ``write_labelled_folders``: a concept's two classes as parameter changes.
CLASSES: dict[str, tuple[tuple[str, dict[str, object]], tuple[str, dict[str, object]]]] = {
    "tempo": (("fast", {"bpm": FAST_BPM}), ("slow", {"bpm": SLOW_BPM})),
    "timbre": (("bright", {"brightness": BRIGHT_LEVELS}), ("dark", {"brightness": DARK_LEVELS})),
    "mood": (("happy", {"major": (True,)}), ("sad", {"major": (False,)})),
    "piano": (("with_piano", {"piano": (True,)}), ("without_piano", {"piano": (False,)})),
}


def labelled_params(concept: str, label: str, rng: random.Random) -> Params:
    for name, changes in CLASSES[concept]:
        if name == label:
            p = Params.random(rng)
            for key, choices in changes.items():
                spec: Any = choices  # (low, high) for bpm, else the values to choose from
                value = rng.uniform(*spec) if key == "bpm" else rng.choice(spec)
                changed: dict[str, Any] = {key: value}
                p = replace(p, **changed)
            return p
    raise UserError(f"{concept!r} has no class {label!r}")


def write_labelled_folders(out: Path, concept: str, per_class: int = 16, seconds: float = 4.0,
                           seed: int = 0) -> list[Path]:
    """``out/<label>/*.wav`` for both classes of ``concept``, as minimal pairs: clip ``i`` of
    each class is the same music (same seed: notes, chords, other parameters) but for the
    concept. Like the presets' prompt pairs, which differ in one word, this leaves the
    concept as the only systematic difference; unpaired clips carried so much other
    variance that 16 per class gave a direction whose split halves agreed at cosine 0.4."""
    from steering_core.audio import write_wav

    if concept not in CLASSES:
        raise UserError(f"no labelled world for {concept!r}; choose one of {', '.join(CLASSES)}")
    rng = random.Random(seed)
    clip_seeds = [rng.randrange(2**31) for _ in range(per_class)]
    folders = []
    for label, _ in CLASSES[concept]:
        folder = out / label
        for i, clip_seed in enumerate(clip_seeds):
            p = labelled_params(concept, label, random.Random(clip_seed))
            write_wav(folder / f"{label}_{i:03d}.wav", render_clip(p, seconds, clip_seed), SAMPLE_RATE)
        folders.append(folder)
    return folders


def vocabulary_words(extra: Sequence[str] = ()) -> list[str]:
    """Every word the toy tokenizer knows: all words of the shipped concept presets and of
    the caption generator, lower-cased."""
    import re


    texts = list(_BASS_ON + _BASS_OFF + _GENERIC) + list(extra)
    for name in available_concepts():
        p = load_concept(name)
        texts += list(p.positive_words + p.negative_words + p.templates)
        texts += [v for vs in p.slots.values() for v in vs]
        texts += [p.positive_label, p.negative_label, p.description]
    words = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower().replace("{", " ").replace("}", " ")))
    return sorted(words)
