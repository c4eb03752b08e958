"""The toy's calibrated default vectors, shipped with the package.

Calibrating the defaults (``evaluate/calibrated_extract.py``: extraction, then a sweep per
candidate layer set) takes minutes on a CPU, and ``steerbridge demo`` and a first
``serve --model toy`` should not wait for it: the toy is the same model everywhere, so its
calibrated ``tempo`` and ``timbre`` ship in ``toy/vectors/``, made by
``benchmarks/calibration.py --write-shipped``. They load through ``load_vector`` like any
file and are used only when the toy in hand is the one they were calibrated on (its
configuration hash, checked by ``check_compatible``, and its weights' hash, recorded in the
calibration); a retrained toy is calibrated afresh.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steering_core.model.loading import MusicGenHandle
from steering_core.steer.vectors import SteeringVector, VectorMismatchError, load_vector

log = logging.getLogger("steerbridge.toy")

SHIPPED_DIR = Path(__file__).resolve().parent / "vectors"


def shipped_path(concept: str) -> Path:
    return SHIPPED_DIR / f"{concept}.safetensors"


def shipped_default(handle: MusicGenHandle, concept: str) -> SteeringVector | None:
    """The shipped calibrated vector for ``concept`` if it was made on this very model, else None."""
    path = shipped_path(concept)
    if handle.model_id != "toy" or not path.is_file():
        return None
    vector = load_vector(path)
    try:
        vector.check_compatible(handle.d_model, handle.num_layers, handle.config_sha256)
    except VectorMismatchError as exc:
        log.info("the shipped %s vector is not for this toy (%s): calibrating afresh", concept, exc)
        return None
    if (vector.calibration or {}).get("model_weights_sha256") != handle.weights_sha256:
        log.info("the shipped %s vector was calibrated on other toy weights: calibrating afresh", concept)
        return None
    return vector
