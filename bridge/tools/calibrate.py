"""``extract --calibrate`` and ``--selective``: a vector with its measured knob range, and
optionally orthogonalised (by measurement) against the concepts it should not move.

The work is in ``steering_core.evaluate`` (``calibration``, ``calibrated_extract``,
``selectivity``); this module runs it for the command line and words what it found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steering_core.evaluate.calibrated_extract import calibrated_vector
from steering_core.evaluate.calibration import apply, calibrate
from steering_core.evaluate.selectivity import effect_row, selective
from steering_core.extract.concepts import ConceptPreset, load_concept
from steering_core.extract.extraction import extract_vector
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector


@dataclass(frozen=True)
class CalibrateOptions:
    prompt: str
    seeds: int = 4
    seconds: float = 3.0
    span: float = 8.0
    method: str = "diffmean"
    frames: int = 50
    selective: tuple[str, ...] = ()  # concepts the vector should leave alone


def calibrated(handle: MusicGenHandle, preset: ConceptPreset, layers: Sequence[int] | None,
               o: CalibrateOptions) -> tuple[SteeringVector, list[str]]:
    """The calibrated (and, with ``o.selective``, selective) vector, and lines saying what was found."""
    common: dict[str, Any] = dict(prompt=o.prompt, seeds=o.seeds, seconds=o.seconds)
    if layers is None:  # the layers are measured too
        vector, cal, every = calibrated_vector(handle, preset, prompt=o.prompt, method=o.method, frames=o.frames,
                                               span=o.span, seeds=o.seeds, seconds=o.seconds)
        lines = ["layer choices: " + "; ".join(c.line() for c in every), "kept: " + cal.line()]
    else:
        base = extract_vector(handle, preset, method=o.method, layers=layers, frames=o.frames)
        cal = calibrate(handle, base, span=o.span, **common)
        vector, lines = apply(base, cal), ["calibrated: " + cal.line()]
    if not o.selective:
        return vector, lines
    others = [extract_vector(handle, load_concept(name), method=o.method, layers=vector.layers, frames=o.frames,
                             progress=False) for name in o.selective]
    plain = dataclasses.replace(vector, alpha_range=preset.alpha_range, calibration=None)
    chosen = selective(handle, plain, others, span=o.span, **common)
    before = effect_row(cal.table, cal.alpha_range)
    after = chosen.candidates[chosen.chosen]["effects"]
    meta = dict(chosen.vector.calibration or {})
    meta.update({k: v for k, v in (vector.calibration or {}).items() if k not in meta})
    meta["selective"] = {"against": list(o.selective), "chosen": chosen.chosen, "candidates": chosen.candidates}
    lines += [f"selective against {', '.join(o.selective)}: kept {chosen.chosen!r}",
              "  effects before: " + _row(before), "  effects after:  " + _row(after)]
    return dataclasses.replace(chosen.vector, calibration=meta), lines


def _row(row: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:+.2f}" for k, v in row.items())
