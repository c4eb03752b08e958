"""steering_core: MusicGen, activation steering and the streaming engine, headless.

No sockets, no sound cards: importable and testable anywhere. The live bridge
(``bridge``) builds on it.

The public names below are imported on first use (PEP 562), so importing a light
submodule such as ``steering_core.concepts`` does not pull in torch and transformers:
``steerbridge --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "ConceptPreset": "concepts", "available_concepts": "concepts", "load_concept": "concepts",
    "METHODS": "extraction", "collect_activations": "extraction", "extract_vector": "extraction",
    "ModelLoadError": "model_names", "MusicGenHandle": "models", "load_model": "models",
    "OPERATORS": "operators",
    "render": "render",
    "SamplingSettings": "sampling",
    "SITES": "sites",
    "Steerer": "steerer",
    "MusicStream": "stream",
    "save_tiny": "tiny",
    "SteeringVector": "vectors", "VectorFileError": "vectors", "VectorMismatchError": "vectors",
    "load_vector": "vectors", "load_vectors": "vectors",
}

__all__ = [
    "METHODS", "OPERATORS", "SITES", "ConceptPreset", "ModelLoadError", "MusicGenHandle", "MusicStream",
    "SamplingSettings", "Steerer", "SteeringVector", "VectorFileError", "VectorMismatchError",
    "available_concepts", "collect_activations", "extract_vector", "load_concept", "load_model",
    "load_vector", "load_vectors", "render", "save_tiny",
]

if TYPE_CHECKING:
    from .concepts import ConceptPreset, available_concepts, load_concept
    from .extraction import METHODS, collect_activations, extract_vector
    from .models import ModelLoadError, MusicGenHandle, load_model
    from .operators import OPERATORS
    from .render import render
    from .sampling import SamplingSettings
    from .sites import SITES
    from .steerer import Steerer
    from .stream import MusicStream
    from .tiny import save_tiny
    from .vectors import SteeringVector, VectorFileError, VectorMismatchError, load_vector, load_vectors


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
