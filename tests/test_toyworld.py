"""The synthetic world the toy model learns: its concepts must be there by construction,
measured on its audio with the same metrics the known-effect check uses."""

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest

from steering_core.audio import read_audio, spectral_centroid
from steering_core.evaluate.metrics import onset_rate
from steering_core.extract.concepts import load_concept
from steering_core.toy import captions
from steering_core.toy import world as w


def clips(seeds=range(4), seconds=6.0, **changes):
    out = []
    for s in seeds:
        p = replace(w.Params.random(random.Random(s)), **changes)
        out.append(w.render_clip(p, seconds, s))
    return out


def test_onset_rate_follows_tempo_and_fast_is_well_above_slow() -> None:
    rates = [np.mean([onset_rate(a, w.SAMPLE_RATE) for a in clips(bpm=bpm)]) for bpm in (65, 100, 135, 170)]
    assert all(b > a for a, b in itertools.pairwise(rates)), rates
    fast = np.mean([onset_rate(a, w.SAMPLE_RATE) for a in clips(bpm=160)])
    slow = np.mean([onset_rate(a, w.SAMPLE_RATE) for a in clips(bpm=75)])
    assert fast >= 1.5 * slow


def test_centroid_follows_brightness_and_bright_is_well_above_dark() -> None:
    centroids = [np.mean([spectral_centroid(a, w.SAMPLE_RATE) for a in clips(brightness=b)])
                 for b in range(w.BRIGHTNESS_LEVELS)]
    assert all(b > a for a, b in itertools.pairwise(centroids)), centroids
    assert centroids[6] >= 1.5 * centroids[0]


def test_audio_is_a_frame_by_frame_function_of_the_codes_and_stays_below_full_scale() -> None:
    rng = random.Random(3)
    codes = w.score(w.Params.random(rng), 120, rng)
    tables = w.frame_tables()
    whole = tables.render(codes)
    halves = np.concatenate([tables.render(codes[:, :50]), tables.render(codes[:, 50:])])
    assert np.array_equal(whole, halves)
    assert codes.min() >= 0 and codes.max() < w.CODEBOOK_SIZE
    loudest = max(np.abs(a).max() for a in clips(range(12), piano=True, bass=True, brightness=6))
    assert loudest < 1.0


def test_every_drum_frame_says_its_tempo_bucket_and_hits_fall_an_eighth_apart() -> None:
    for bpm, bucket, gaps in ((60.0, 0, {24, 25, 26}), (120.0, 3, {11, 12, 13}), (170.0, 5, {8, 9, 10})):
        assert w.tempo_bucket(bpm) == bucket
        p = replace(w.Params.random(random.Random(0)), bpm=bpm)
        codes = w.score(p, 200, random.Random(1))[w.DRUMS]
        assert {w.drum_bucket(int(c)) for c in codes} == {bucket}, bpm  # every frame, sounding or not
        hits = [i for i, c in enumerate(codes) if w.is_hit(int(c))]
        assert set(np.diff(hits)) <= gaps, (bpm, np.diff(hits))  # an eighth, give or take a frame
        for hit, nxt in itertools.pairwise(hits):
            voice = next(v for v in w.DRUM_FRAMES if codes[hit] == w.drum_code(v, 0, bucket))
            sounding = w.DRUM_FRAMES[voice]
            assert list(codes[hit:hit + sounding]) == [w.drum_code(voice, a, bucket) for a in range(sounding)]
            assert list(codes[hit + sounding:nxt]) == [w.tail_code(bucket)] * (nxt - hit - sounding)


def test_labelled_tempo_classes_sit_in_their_own_buckets() -> None:
    rng = random.Random(2)
    assert {w.tempo_bucket(captions.labelled_params("tempo", "fast", rng).bpm) for _ in range(50)} == {4, 5}
    assert {w.tempo_bucket(captions.labelled_params("tempo", "slow", rng).bpm) for _ in range(50)} == {0, 1}


def test_every_drum_code_sounds_different_so_the_codec_can_read_it_back() -> None:
    """The codec learns codes from audio: two drum codes that sounded the same (as the old
    silent countdown did) could not be told apart, and labelled audio would come back wrong.
    The tempo bucket is audible in every frame, as a tone that no instrument plays."""
    table = w.frame_tables().table[w.DRUMS]
    used = range(1, w.tail_code(w.TEMPO_BUCKET_COUNT - 1) + 1)
    for a, b in itertools.combinations(used, 2):
        assert np.abs(table[a] - table[b]).max() > 1e-3, (a, b)
    partials = {p * h for p in w.LEAD_PITCHES + tuple(x for c in w.PIANO_CHORDS.values() for x in c)
                for h in range(1, 40)} | {p * h for p in w.BASS_PITCHES for h in range(1, 7)}
    assert len(set(w.ROOM_TONES)) == w.TEMPO_BUCKET_COUNT and not set(w.ROOM_TONES) & partials
    darkest = np.mean([spectral_centroid(a, w.SAMPLE_RATE) for a in clips(brightness=0)])
    assert max(w.ROOM_TONES) < 0.75 * darkest  # well below every clip's centroid: it scales them alike
    assert np.abs(table[0]).max() == 0  # code 0: no drums at all


@pytest.mark.parametrize("concept", ["tempo", "timbre", "mood", "piano"])
def test_every_preset_word_is_in_the_toy_vocabulary(concept: str) -> None:
    from steering_core.toy.model import toy_tokenizer

    tok = toy_tokenizer()
    preset = load_concept(concept)
    for pos, neg in preset.pairs():
        for prompt in (pos, neg):
            assert tok.unk_token_id not in tok(prompt)["input_ids"], prompt


def test_captions_say_what_the_clip_plays() -> None:
    words = captions.caption_words()
    rng = random.Random(5)
    for _ in range(300):
        text, _codes, p = captions.training_example(rng, 40)
        said_fast = any(f" {x}" in f" {text}" for x in words.fast)
        said_slow = any(f" {x}" in f" {text}" for x in words.slow)
        if said_fast and not said_slow:
            assert p.bpm >= w.FAST_BPM[0], text
        if said_slow and not said_fast:
            assert p.bpm <= w.SLOW_BPM[1], text


def test_labelled_folders_hold_both_classes(tmp_path) -> None:
    folders = captions.write_labelled_folders(tmp_path, "tempo", per_class=2, seconds=2.0)
    assert [f.name for f in folders] == ["fast", "slow"]
    for folder in folders:
        files = sorted(folder.glob("*.wav"))
        assert len(files) == 2
        audio, rate = read_audio(files[0])
        assert rate == w.SAMPLE_RATE and audio.shape[-1] == 2 * w.SAMPLE_RATE
