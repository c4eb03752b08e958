"""steering_core: MusicGen, activation steering and the streaming engine, headless.

No sockets, no sound cards: importable and testable anywhere. The live bridge
(``bridge``) builds on it.

The public names below are imported on first use (PEP 562), so importing a light
submodule such as ``steering_core.extract.concepts`` does not pull in torch and transformers:
``steerbridge --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "ConceptPreset": "extract.concepts", "available_concepts": "extract.concepts", "load_concept": "extract.concepts",
    "METHODS": "extract.extraction", "collect_activations": "extract.extraction", "extract_vector": "extract.extraction",
    "ModelLoadError": "model.names", "MusicGenHandle": "model.loading", "load_model": "model.loading",
    "OPERATORS": "steer.operators",
    "render": "stream.render",
    "SamplingSettings": "stream.sampling",
    "SITES": "steer.sites",
    "Steerer": "steer.steerer",
    "MusicStream": "stream.decode_loop",
    "save_tiny": "model.tiny",
    "SteeringVector": "steer.vectors", "VectorFileError": "steer.vectors", "VectorMismatchError": "steer.vectors",
    "load_vector": "steer.vectors", "load_vectors": "steer.vectors",
}

__all__ = [
    "METHODS", "OPERATORS", "SITES", "ConceptPreset", "ModelLoadError", "MusicGenHandle", "MusicStream",
    "SamplingSettings", "Steerer", "SteeringVector", "VectorFileError", "VectorMismatchError",
    "available_concepts", "collect_activations", "extract_vector", "load_concept", "load_model",
    "load_vector", "load_vectors", "render", "save_tiny",
]

if TYPE_CHECKING:
    from steering_core.extract.concepts import ConceptPreset, available_concepts, load_concept
    from steering_core.extract.extraction import METHODS, collect_activations, extract_vector
    from steering_core.model.loading import ModelLoadError, MusicGenHandle, load_model
    from steering_core.model.tiny import save_tiny
    from steering_core.steer.operators import OPERATORS
    from steering_core.steer.sites import SITES
    from steering_core.steer.steerer import Steerer
    from steering_core.steer.vectors import SteeringVector, VectorFileError, VectorMismatchError, load_vector, load_vectors
    from steering_core.stream.decode_loop import MusicStream
    from steering_core.stream.render import render
    from steering_core.stream.sampling import SamplingSettings


assert sorted(__all__) == sorted(_EXPORTS), "every export needs its module in _EXPORTS"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steering_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
