"""What the toy played, read back from its codes: the ground truth beside the audio measures.

On ``toy`` the audio is an exact function of the codes and each codebook is one instrument
(``toy/world.py``), so a generated clip's codes say exactly what a listener hears: when
each drum hit falls (hence the tempo, with no onset detector in the way), which shade of
brightness the lead is voiced in, and whether the piano and the bass play. Calibration and
the selectivity matrix use it on the toy beside librosa-free audio measures
(``evaluate/calibration.py``), and the toy's checks assert on both.
"""

from __future__ import annotations

import numpy as np

from steering_core.toy import world

#: The names of what ``read_codes`` returns, in the units a performer knows.
CODE_MEASURES = ("drum_bpm", "lead_shade", "lead_presence", "piano_presence", "bass_presence")


def hit_frames(drums: np.ndarray) -> np.ndarray:
    """The frames of codebook 0 where a drum voice starts (a hit)."""
    return np.flatnonzero([world.is_hit(int(c)) for c in drums])


def drum_bpm(drums: np.ndarray) -> float:
    """The tempo the drums play: one hit per eighth note, so BPM = 30 x hits per second,
    from the mean gap between the first and the last hit (0 with fewer than two hits)."""
    hits = hit_frames(drums)
    if hits.size < 2:
        return 0.0
    gap_frames = (hits[-1] - hits[0]) / (hits.size - 1)
    return float(30.0 * world.FRAME_RATE / gap_frames)


def lead_shade(lead: np.ndarray) -> float:
    """The lead's mean brightness shade, 0 (dark) .. 6 (bright), over the frames it plays
    (NaN if it rests throughout)."""
    shades = [s for s in (world.lead_brightness(int(c)) for c in lead) if s is not None]
    return float(np.mean(shades)) if shades else float("nan")


def read_codes(codes: np.ndarray) -> dict[str, float]:
    """One clip's codes [K, T] (aligned, no delay pattern) -> what it plays."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != world.NUM_CODEBOOKS:
        raise ValueError(f"toy codes are [{world.NUM_CODEBOOKS}, frames], got {codes.shape}")
    sounding = codes != 0
    return {
        "drum_bpm": drum_bpm(codes[world.DRUMS]),
        "lead_shade": lead_shade(codes[world.LEAD]),
        "lead_presence": float(sounding[world.LEAD].mean()),
        "piano_presence": float(sounding[world.PIANO].mean()),
        "bass_presence": float(sounding[world.BASS].mean()),
    }
