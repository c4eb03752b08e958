"""A concept's linear probe on its steered layer: how present the concept is in an activation.

SMITIN's self-monitoring: a logistic probe, fitted on the same labelled activations the
vector was extracted from, reads the concept's presence on the steered layer while the
music plays, so a probe target can add "until the probe says the concept is there, and
no more". The probe lives in the vector's file (``docs/VECTORS.md``: tensors
``probe_weights`` and ``probe_bias``, metadata ``probe``) and is plain maths here:
``logit(h) = h · weights + bias`` on raw activations (the fit's standardisation is folded
into ``weights`` and ``bias``), ``probability = sigmoid(logit)``.

The layer is the deepest steered layer of the vector: every layer the vector pushes is
upstream of (or is) that one, so its output carries all of the push.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steering_core.errors import UserError

#: Inverse L2 strengths the fit chooses from by cross-validated log-loss (as ``probe_logistic``).
PROBE_CS = np.logspace(-4, 2, 13)


class ProbeError(UserError):
    """A probe that cannot be fitted or does not fit its vector."""


@dataclass(frozen=True)
class LinearProbe:
    """``sigmoid(h · weights + bias)`` at ``layer``'s ``site`` output: the concept's probability."""

    layer: int
    weights: torch.Tensor  # float32 [d_model], in raw activation units
    bias: float
    #: How it was fitted (JSON): method, chosen C, training accuracy, rows per class, pooling.
    info: Mapping[str, Any]

    def __post_init__(self) -> None:
        w = self.weights
        if w.ndim != 1 or w.dtype != torch.float32:
            raise ProbeError(f"probe weights must be float32 [d_model], got {w.dtype} {tuple(w.shape)}")
        if not torch.isfinite(w).all() or not math.isfinite(self.bias):
            raise ProbeError("probe weights and bias must be finite")
        if not isinstance(self.info, Mapping):
            raise ProbeError("probe info must be a JSON object")
        # Held at float32, the precision it is stored at, so a saved probe loads to the same bits.
        object.__setattr__(self, "bias", float(np.float32(self.bias)))

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        """``h · weights + bias`` for activations ``h`` [..., d_model] (float32)."""
        return h.float() @ self.weights.to(h.device) + self.bias

    def probability(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(h))

    def metadata(self) -> dict[str, Any]:
        return {"layer": self.layer, **dict(self.info)}


def fit_probe(pos: torch.Tensor, neg: torch.Tensor, layer: int, *, pool: str = "mean_over_frames") -> LinearProbe:
    """A logistic probe for ``pos`` (label 1) against ``neg`` (label 0), activations [N, d] of
    one layer. Fitted on standardised activations (as ``extraction._probe``: its L2 penalty
    would otherwise depend on the activations' scale), its L2 strength chosen by stratified
    cross-validation of the log-loss, then folded back into raw units."""
    from sklearn.linear_model import LogisticRegressionCV

    x = torch.cat([pos, neg]).float().numpy().astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    if min(len(pos), len(neg)) < 2:
        raise ProbeError("a probe needs at least two activations of each class")
    mu = x.mean(axis=0)
    spread = x.std(axis=0)
    spread = np.where(spread > 1e-12 * max(1.0, float(spread.max())), spread, np.inf)  # constant features carry nothing
    z = (x - mu) / spread
    folds = max(2, min(5, len(pos), len(neg)))
    with warnings.catch_warnings():  # sklearn's deprecation notices and non-converged folds
        warnings.simplefilter("ignore")
        model = LogisticRegressionCV(Cs=PROBE_CS, cv=folds, scoring="neg_log_loss", max_iter=5000).fit(z, y)
    w_z = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
    weights = w_z / spread
    bias = float(model.intercept_[0]) - float(weights @ mu)
    accuracy = float(((x @ weights + bias > 0) == (y == 1)).mean())
    info = {"method": "logistic", "C": float(np.asarray(model.C_).reshape(-1)[0]), "train_accuracy": round(accuracy, 4),
            "n_pos": len(pos), "n_neg": len(neg), "aggregation": pool}
    return LinearProbe(layer=int(layer), weights=torch.from_numpy(weights.astype(np.float32)), bias=bias, info=info)


__all__ = ["LinearProbe", "ProbeError", "fit_probe"]
