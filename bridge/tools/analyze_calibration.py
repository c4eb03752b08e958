"""``analyze``'s calibration step: each concept's measured knob range, the cross-effect
matrix (what every knob moves, over its calibrated range) and, with two concepts or more,
each one made selective against the others, with the matrix after.

Writes ``<concept>.safetensors`` calibrated (the knob's range measured, see docs/VECTORS.md),
``<concept>_selective.safetensors`` where a selective candidate measured better,
``calibration_<concept>.png`` and ``cross_effects.png``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from steering_core.evaluate.calibration import OWN_MEASURE, Calibration, apply, calibrate
from steering_core.evaluate.selectivity import cross_effects, selective
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector

from .plots import calibration_curves, effect_matrix

log = logging.getLogger("steerbridge.analyze")


@dataclass(frozen=True)
class CalibrationSettings:
    prompt: str
    seeds: int = 3
    seconds: float = 3.0
    span: float = 8.0


#: The other concepts' directions on the given layers (from the same activations).
OthersOn = Callable[[str, tuple[int, ...]], list[SteeringVector]]


def calibrate_concepts(handle: MusicGenHandle, vectors: Sequence[SteeringVector], others_on: OthersOn,
                       s: CalibrationSettings, out: Path) -> tuple[dict[str, SteeringVector], dict[str, Any]]:
    """The calibrated vectors (by concept) and the report's ``calibration`` section."""
    report: dict[str, Any] = {"prompt": s.prompt, "seeds": s.seeds, "seconds": s.seconds, "concepts": {}}
    common: dict[str, Any] = dict(prompt=s.prompt, seeds=s.seeds, seconds=s.seconds, span=s.span)
    cals: dict[str, Calibration] = {}
    out_vectors: dict[str, SteeringVector] = {}
    for v in vectors:
        if v.concept not in OWN_MEASURE:
            report["concepts"][v.concept] = {"skipped": f"no measure is known for {v.concept!r} (calibration knows "
                                                        f"{', '.join(OWN_MEASURE)}); its range stays the preset's"}
            continue
        with tqdm(desc=f"{v.concept}: calibrating the knob range", unit="alpha") as bar:
            cal = calibrate(handle, v, on_alpha=lambda _a: bar.update(), **common)
        cals[v.concept] = cal
        out_vectors[v.concept] = apply(v, cal)
        log.info("calibrated %s", cal.line())
        plot = calibration_curves(cal.table, cal.alpha_range, cal.own, out / f"calibration_{v.concept}.png",
                                  title=f"{v.concept}: measures vs alpha (shaded: calibrated range)")
        report["concepts"][v.concept] = {**cal.metadata(), "alpha_range": list(cal.alpha_range), "line": cal.line(),
                                         "plot": plot.name}
    if not cals:
        return out_vectors, report
    before = cross_effects(list(cals.values()))
    report["cross_effects"] = {"before": before, "note": "change over each knob's calibrated range: relative to "
                               "alpha 0 for rates, centroid, RMS, tempo and shade; absolute share of frames for "
                               "presences"}
    after = dict(before)
    if len(cals) > 1:
        report["selective"] = {}
        for name, v in list(out_vectors.items()):
            others = others_on(name, v.layers)
            plain = dataclasses.replace(v, calibration=None)
            chosen = selective(handle, plain, others, **common)
            after[name] = chosen.candidates[chosen.chosen]["effects"]
            entry: dict[str, Any] = {"chosen": chosen.chosen, "candidates": chosen.candidates}
            if chosen.chosen != "as is":
                entry["vector"] = chosen.vector.save(out / f"{name}_selective.safetensors").name
            report["selective"][name] = entry
        report["cross_effects"]["after"] = after
    plot = effect_matrix(before, after if len(cals) > 1 else None, out / "cross_effects.png")
    report["cross_effects"]["plot"] = plot.name
    return out_vectors, report
