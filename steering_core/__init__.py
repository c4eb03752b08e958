"""steering_core: MusicGen, activation steering and the streaming engine, headless.

No sockets, no sound cards: importable and testable anywhere. The live bridge
(``bridge``) builds on it.
"""

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

__all__ = [
    "METHODS", "OPERATORS", "SITES", "ConceptPreset", "ModelLoadError", "MusicGenHandle", "MusicStream",
    "SamplingSettings", "Steerer", "SteeringVector", "VectorFileError", "VectorMismatchError",
    "available_concepts", "collect_activations", "extract_vector", "load_concept", "load_model",
    "load_vector", "load_vectors", "render", "save_tiny",
]
