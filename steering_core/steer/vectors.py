"""Steering vectors: per-layer unit directions for one concept, and their file format.

A ``SteeringVector`` holds unit rows ``directions[i]`` for ``layers[i]`` and a per-layer
``gains[i]``: what the knob's alpha is multiplied by at that layer. The algebra keeps
rows unit length and moves magnitude into the gains, so ``(fast - slow) * 0.5`` or
``tempo.orthogonalized(timbre)`` read like the maths they are.

On disk it is a ``.safetensors`` file (never pickle): tensors ``directions`` (float32
[L, d_model]) and ``layers`` (int64 [L]), and JSON metadata under the key
``steerbridge`` (see docs/VECTORS.md in the repository). Loading checks everything and refuses a file built
for another model or width.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steering_core.errors import UserError
from steering_core.steer.operators import OPERATORS
from steering_core.steer.probe import LinearProbe, ProbeError
from steering_core.steer.sites import SITES

FORMAT_VERSION = 1
METADATA_KEY = "steerbridge"
CFG_MODES = ("cond", "uncond", "both")


#: Bounds that keep alpha x gain x activation finite in float32 (max ~3.4e38) with a wide margin.
MAX_ABS_ALPHA = 1e4
MAX_ABS_GAIN = 1e4
#: A concept name becomes an OSC address part and a file name: no wildcards, slashes,
#: spaces or newlines. Checked with ``fullmatch`` (``$`` would let a trailing newline by).
CONCEPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")


class VectorFileError(UserError):
    """A vector file that is not a valid steerbridge file (corrupt, incomplete, wrong types)."""


class VectorMismatchError(UserError):
    """A valid vector file built for another model (width, layer count or configuration)."""


@dataclass(frozen=True)
class LayerStats:
    """Calibration of one layer: typical activation norm and where each class projects."""

    mean_norm: float
    proj_pos_mean: float
    proj_neg_mean: float
    proj_std: float


@dataclass(frozen=True)
class SteeringVector:
    concept: str
    directions: torch.Tensor  # float32 [L, d_model], unit rows
    layers: tuple[int, ...]
    site: str = "resid_post"
    method: str = "diffmean"
    operator: str = "add"
    cfg_mode: str = "cond"
    alpha_range: tuple[float, float] = (-4.0, 4.0)
    gains: tuple[float, ...] = ()
    model_id: str = ""
    model_config_sha256: str = ""
    aggregation: str = "mean_over_frames"
    n_pos: int = 0
    n_neg: int = 0
    prompt_sha256: str = ""
    stats: dict[int, LayerStats] = field(default_factory=dict)
    created: str = ""
    #: How ``alpha_range`` was measured (``evaluate/calibration.py``); None: not calibrated.
    calibration: dict[str, Any] | None = None
    #: The concept's logistic probe on its deepest steered layer (``steer/probe.py``); None: none fitted.
    probe: LinearProbe | None = None

    def __post_init__(self) -> None:
        d = self.directions
        if d.ndim != 2 or d.shape[0] != len(self.layers):
            raise VectorFileError(f"directions must be [L, d_model] with L = {len(self.layers)} layers, got {tuple(d.shape)}")
        if not torch.isfinite(d).all():
            raise VectorFileError("directions contain NaN or inf")
        norms = d.float().norm(dim=-1)
        if (norms < 1e-8).any():
            empty = [layer for layer, norm in zip(self.layers, norms.tolist(), strict=True) if norm < 1e-8]
            raise VectorFileError(f"the direction for layer{'s' if len(empty) > 1 else ''} "
                                  f"{', '.join(map(str, empty))} has zero length")
        if (norms - 1).abs().max() > 1e-6:  # keep already-unit rows bit-exact through save/load
            d = d.float() / norms[:, None]
        object.__setattr__(self, "directions", d.float().contiguous())
        if not self.gains:
            object.__setattr__(self, "gains", tuple(1.0 for _ in self.layers))
        if len(self.gains) != len(self.layers) or not all(math.isfinite(g) for g in self.gains):
            raise VectorFileError("gains must be one finite number per layer")
        if any(abs(g) > MAX_ABS_GAIN for g in self.gains):
            raise VectorFileError(f"gains must be within +-{MAX_ABS_GAIN:g} (alpha x gain must stay finite in float32)")
        if self.site not in SITES:
            raise VectorFileError(f"unknown site {self.site!r}")
        if self.operator not in OPERATORS:
            raise VectorFileError(f"unknown operator {self.operator!r}")
        if self.cfg_mode not in CFG_MODES:
            raise VectorFileError(f"unknown cfg_mode {self.cfg_mode!r}")
        lo, hi = self.alpha_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise VectorFileError(f"alpha_range must be two finite numbers, low < high; got {self.alpha_range}")
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise VectorFileError("calibration must be a JSON object")
        if self.probe is not None and (self.probe.layer not in self.layers or self.probe.weights.shape[0] != self.d_model):
            raise VectorFileError(f"the probe is on layer {self.probe.layer} with width {self.probe.weights.shape[0]}; "
                                  f"the vector steers layers {list(self.layers)} at width {self.d_model}")
        if max(abs(lo), abs(hi)) > MAX_ABS_ALPHA:
            raise VectorFileError(f"alpha_range {lo:g}..{hi:g} goes past +-{MAX_ABS_ALPHA:g}: a knob there would "
                                  "turn the stream into inf/NaN")

    @property
    def d_model(self) -> int:
        return int(self.directions.shape[1])

    def direction(self, layer: int) -> torch.Tensor:
        return self.directions[self.layers.index(layer)]

    # --- algebra -------------------------------------------------------------------
    def _scaled_rows(self) -> torch.Tensor:
        return self.directions * torch.tensor(self.gains)[:, None]

    def _from_rows(self, rows: torch.Tensor, **changes: Any) -> SteeringVector:
        gains = tuple(float(g) for g in rows.norm(dim=-1))
        # New rows are a new vector: the old range was measured for the old one, the probe
        # read the old concept.
        return dataclasses.replace(self, directions=rows, gains=gains, calibration=None, probe=None, **changes)

    def _aligned(self, other: SteeringVector) -> None:
        if self.layers != other.layers or self.site != other.site or self.d_model != other.d_model:
            raise VectorMismatchError("vector algebra needs the same layers, site and width on both sides")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        self._aligned(other)
        return self._from_rows(self._scaled_rows() + other._scaled_rows(), concept=f"{self.concept}+{other.concept}")

    def __neg__(self) -> SteeringVector:
        return dataclasses.replace(self, directions=-self.directions, concept=f"-{self.concept}", calibration=None,
                                   probe=None)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def __mul__(self, k: float) -> SteeringVector:
        if k == 0 or not math.isfinite(k):
            raise UserError("scale by a finite, non-zero number (turn the knob to 0 instead)")
        flipped = self if k > 0 else -self
        return dataclasses.replace(flipped, gains=tuple(g * abs(k) for g in self.gains), calibration=None)

    __rmul__ = __mul__

    def orthogonalized(self, other: SteeringVector) -> SteeringVector:
        """This vector with ``other``'s direction removed at every shared layer, so that
        turning one knob does not also turn the other."""
        self._aligned(other)
        u = other.directions
        rows = self._scaled_rows()
        rows = rows - (rows * u).sum(-1, keepdim=True) * u
        return self._from_rows(rows, concept=f"{self.concept}⊥{other.concept}")

    def cosine(self, other: SteeringVector) -> torch.Tensor:
        """Cosine similarity per shared layer."""
        self._aligned(other)
        return (self.directions * other.directions).sum(-1)

    # --- compatibility -------------------------------------------------------------
    def check_compatible(self, d_model: int, num_layers: int, config_sha256: str = "") -> None:
        """Refuse, with a clear message, to steer a model this vector was not built for."""
        if self.d_model != d_model:
            raise VectorMismatchError(
                f"vector {self.concept!r} has width {self.d_model} but the model has d_model={d_model}: "
                f"it was built for {self.model_id or 'another model'}; re-extract it for this model")
        bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
        if bad:
            raise VectorMismatchError(
                f"vector {self.concept!r} steers layers {bad}, but the model has {num_layers} layers")
        if config_sha256 and self.model_config_sha256 and config_sha256 != self.model_config_sha256:
            raise VectorMismatchError(
                f"vector {self.concept!r} was built for {self.model_id or 'another model'} "
                f"(config {self.model_config_sha256[:12]}), not this one (config {config_sha256[:12]})")

    # --- file format -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        meta = {
            "format_version": FORMAT_VERSION,
            "concept": self.concept,
            "model_id": self.model_id,
            "model_config_sha256": self.model_config_sha256,
            "d_model": self.d_model,
            "site": self.site,
            "method": self.method,
            "aggregation": self.aggregation,
            "cfg_mode": self.cfg_mode,
            "operator": self.operator,
            "alpha_range": list(self.alpha_range),
            "gains": list(self.gains),
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "prompt_sha256": self.prompt_sha256,
            "stats": {str(k): dataclasses.asdict(v) for k, v in self.stats.items()},
            "created": self.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        if self.calibration is not None:
            meta["calibration"] = self.calibration
        if self.probe is not None:
            meta["probe"] = self.probe.metadata()
        return meta

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "directions": self.directions.float().contiguous().cpu(),
            "layers": torch.tensor(self.layers, dtype=torch.int64),
        }
        if self.probe is not None:
            tensors["probe_weights"] = self.probe.weights.float().contiguous().cpu()
            tensors["probe_bias"] = torch.tensor([self.probe.bias], dtype=torch.float32)
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(self.metadata())})
        return path


def load_vector(path: str | Path) -> SteeringVector:
    """Read a vector file; any defect is a ``VectorFileError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such vector file")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise VectorFileError(f"{path}: no '{METADATA_KEY}' metadata; not a steerbridge vector file")
    try:
        meta = json.loads(raw)
        if meta.get("format_version") != FORMAT_VERSION:
            raise VectorFileError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        directions, layers = tensors["directions"], tensors["layers"]
        if directions.dtype != torch.float32 or layers.dtype != torch.int64 or layers.ndim != 1:
            raise VectorFileError(f"{path}: directions must be float32 [L, d] and layers int64 [L]")
        if meta.get("d_model") != directions.shape[-1]:
            raise VectorFileError(f"{path}: metadata d_model {meta.get('d_model')} disagrees with the tensor")
        concept = meta["concept"]
        if not (isinstance(concept, str) and CONCEPT_NAME.fullmatch(concept)):
            raise VectorFileError(f"{path}: concept name {str(concept)[:40]!r} is not a name (letters, digits, "
                                  "'_', '-', '.', '+'; at most 64; no wildcards, slashes or spaces)")
        stats = {int(k): LayerStats(**v) for k, v in meta.get("stats", {}).items()}
        return SteeringVector(
            concept=str(meta["concept"]),
            directions=directions,
            layers=tuple(int(x) for x in layers.tolist()),
            site=meta["site"],
            method=meta["method"],
            operator=meta["operator"],
            cfg_mode=meta["cfg_mode"],
            alpha_range=(float(meta["alpha_range"][0]), float(meta["alpha_range"][1])),
            gains=tuple(float(g) for g in meta.get("gains", [])),
            model_id=str(meta.get("model_id", "")),
            model_config_sha256=str(meta.get("model_config_sha256", "")),
            aggregation=str(meta.get("aggregation", "")),
            n_pos=int(meta.get("n_pos", 0)),
            n_neg=int(meta.get("n_neg", 0)),
            prompt_sha256=str(meta.get("prompt_sha256", "")),
            stats=stats,
            created=str(meta.get("created", "")),
            calibration=meta.get("calibration"),  # absent in files written before calibration
            probe=_load_probe(tensors, meta.get("probe")),  # absent in files written before probes
        )
    except VectorFileError:
        raise
    except ProbeError as exc:
        raise VectorFileError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise VectorFileError(f"{path}: malformed steerbridge metadata or tensors ({type(exc).__name__}: {exc})") from exc


def _load_probe(tensors: dict[str, torch.Tensor], meta: Any) -> LinearProbe | None:
    """The probe a file carries: both tensors and its metadata, or none of them."""
    if meta is None and "probe_weights" not in tensors and "probe_bias" not in tensors:
        return None
    weights, bias = tensors.get("probe_weights"), tensors.get("probe_bias")
    if weights is None or bias is None or not isinstance(meta, dict) or "layer" not in meta:
        raise VectorFileError("a probe needs tensors probe_weights and probe_bias and metadata probe with its layer")
    if bias.dtype != torch.float32 or bias.shape != (1,):
        raise VectorFileError("probe_bias must be float32 [1]")
    info = {k: v for k, v in meta.items() if k != "layer"}
    return LinearProbe(layer=int(meta["layer"]), weights=weights, bias=float(bias[0]), info=info)


def load_vectors(path: str | Path) -> list[SteeringVector]:
    """One file, or every ``*.safetensors`` in a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise VectorFileError(f"{path}: folder holds no .safetensors vector files")
        return [load_vector(f) for f in files]
    return [load_vector(path)]
