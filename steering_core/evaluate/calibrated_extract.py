"""A concept's vector extracted *and* calibrated: layers and knob range both measured.

What ``serve`` extracts when no ``--vectors`` are given, what ``extract --calibrate``
writes, and how the toy's shipped defaults (``toy/vectors/``) were made. Activations are
collected once for every layer; each candidate layer set (every single layer of the
preset's span, and the whole span) becomes a vector; ``calibration.choose_layers``
keeps the one whose calibrated range moves the concept furthest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from steering_core.evaluate.calibration import Calibration, alpha_grid, choose_layers
from steering_core.extract.concepts import ConceptPreset
from steering_core.extract.extraction import collect_activations, vector_from_activations
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector

log = logging.getLogger("steerbridge.calibrate")


def layer_candidates(preset: ConceptPreset, num_layers: int) -> list[tuple[int, ...]]:
    """Each layer of the preset's span alone, then the whole span."""
    span = preset.layers_for(num_layers)
    singles = [(layer,) for layer in span]
    return singles + ([tuple(span)] if len(span) > 1 else [])


def calibrated_vector(handle: MusicGenHandle, preset: ConceptPreset, *, prompt: str,
                      layers: Sequence[Sequence[int]] | None = None, method: str = "diffmean",
                      frames: int = 50, span: float = 8.0, seeds: int = 4, seconds: float = 3.0,
                      progress: bool = True, **kwargs: Any) -> tuple[SteeringVector, Calibration, list[Calibration]]:
    """The calibrated vector, its calibration, and every candidate's (for the report)."""
    candidates = [tuple(c) for c in (layers or layer_candidates(preset, handle.num_layers))]
    pairs = preset.pairs()
    common: dict[str, Any] = dict(site=preset.site, frames=frames, progress=progress)
    pos = collect_activations(handle, [p for p, _ in pairs], desc=f"{preset.name}: {preset.positive_label}", **common)
    neg = collect_activations(handle, [n for _, n in pairs], desc=f"{preset.name}: {preset.negative_label}", **common)
    vectors = [vector_from_activations(handle, preset.name, pos, neg, c, method=method, site=preset.site,
                                       preset=preset, prompt_sha256=preset.prompt_sha256()) for c in candidates]
    grid = alpha_grid(span)
    with tqdm(total=len(grid) * len(vectors), desc=f"{preset.name}: calibrating {len(vectors)} layer choices",
              unit="alpha", disable=not progress) as bar:
        vector, cal, every = choose_layers(handle, vectors, prompt=prompt, alphas=grid, seeds=seeds,
                                           seconds=seconds, on_alpha=lambda _a: bar.update(), **kwargs)
    meta = dict(vector.calibration or {})
    meta["model_weights_sha256"] = handle.weights_sha256
    meta["layer_candidates"] = [{"layers": list(c.layers), "alpha_range": list(c.alpha_range), "found": c.found,
                                 "own_change": round(c.own_change, 4)} for c in every]
    log.info("%s", cal.line())
    import dataclasses

    return dataclasses.replace(vector, calibration=meta), cal, every


def with_probe(handle: MusicGenHandle, preset: ConceptPreset, vector: SteeringVector, *, frames: int = 50,
               progress: bool = True) -> SteeringVector:
    """``vector`` (made by ``calibrated_vector`` before vectors carried probes) with the probe
    it would carry now: the activations are collected again exactly as ``calibrated_vector``
    collected them, checked to give the vector's own directions (so the probe is fitted on
    the same activations the vector came from), and only the probe is added."""
    import dataclasses

    import torch

    pairs = preset.pairs()
    common: dict[str, Any] = dict(site=vector.site, frames=frames, progress=progress)
    pos = collect_activations(handle, [p for p, _ in pairs], desc=f"{preset.name}: {preset.positive_label}", **common)
    neg = collect_activations(handle, [n for _, n in pairs], desc=f"{preset.name}: {preset.negative_label}", **common)
    again = vector_from_activations(handle, preset.name, pos, neg, vector.layers, method=vector.method, site=vector.site,
                                    preset=preset, prompt_sha256=preset.prompt_sha256())
    if not torch.allclose(again.directions, vector.directions, atol=1e-5) or again.prompt_sha256 != vector.prompt_sha256:
        raise RuntimeError(f"{preset.name}: the activations collected again do not give the vector's directions; "
                           "calibrate afresh instead")
    return dataclasses.replace(vector, probe=again.probe)
