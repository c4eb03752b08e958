"""Where a concept lives: per-layer probes and clustering, and a layer recommendation.

For activations [N, L, d] with a label per row, each layer gets
* ``acc_logistic``: cross-validated accuracy of a logistic (BCE) probe;
* ``acc_mse``: cross-validated accuracy of a least-squares (MSE) probe, by sign;
* ``ari`` / ``nmi``: k-means (k = number of classes) against the labels;
* ``chance`` and ``at_chance``: the majority-class rate, and whether the better probe
  is within the one-sided 95 % binomial margin of it (then the layer tells nothing).

Probes see standardised activations and choose their regularisation by inner
cross-validation, so their accuracy does not depend on the activations' units.

``recommend_layers`` ranks layers by probe accuracy, breaking near-ties by NMI and
then by nearness to the middle layer, and keeps the best and those close to it, at
most one layer in six (Panda et al. pick by probe accuracy and clustering; TADA finds
concepts in a small subset of layers).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import BaseCrossValidator, StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from steering_core.errors import UserError


@dataclass(frozen=True)
class LayerScore:
    layer: int
    acc_logistic: float
    acc_mse: float
    ari: float
    nmi: float
    chance: float = 0.5
    at_chance: bool = False

    @property
    def score(self) -> float:
        return 0.5 * (self.acc_logistic + self.acc_mse) + 0.1 * self.nmi

    def to_json(self) -> dict[str, float | int]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def chance_margin(labels: np.ndarray) -> tuple[float, float]:
    """(majority-class rate, the accuracy a classifier must beat to be above it): the
    one-sided 95 % binomial margin over the number of rows."""
    counts = np.unique(labels, return_counts=True)[1]
    p = float(counts.max() / counts.sum())
    return p, p + 1.645 * float(np.sqrt(p * (1 - p) / counts.sum()))


def _folds(labels: np.ndarray, groups: np.ndarray | None) -> tuple[BaseCrossValidator, np.ndarray | None]:
    smallest = int(np.min(np.unique(labels, return_counts=True)[1]))
    if smallest < 2:
        raise UserError("each class needs at least two examples for cross-validation")
    if groups is None:
        return StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=0), None
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise UserError("need at least two groups (prompt pairs or source files) for cross-validation")
    return StratifiedGroupKFold(n_splits=min(5, n_groups), shuffle=True, random_state=0), groups


def score_layers(activations: torch.Tensor, labels: Sequence[str], *, groups: Sequence[int] | None = None,
                 seed: int = 0) -> list[LayerScore]:
    """Probe accuracy and clustering agreement at every layer.

    ``groups`` keeps related rows in the same fold: the two prompts of a contrastive
    pair (which differ by one word), or the windows of one file. Without it a probe
    can score by recognising the pair partner it saw in training, which with paired
    prompts drives accuracy far *below* chance."""
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise UserError("need at least two classes")
    folds, group_ids = _folds(y, None if groups is None else np.asarray(groups))
    out = []
    acts = activations.float().numpy()
    chance, above = chance_margin(y)
    inner = max(2, min(3, int(np.min(np.unique(y, return_counts=True)[1])) // 2))
    for layer in range(acts.shape[1]):
        x = acts[:, layer]
        logistic = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=inner, max_iter=3000,
                                                                        scoring="neg_log_loss"))
        mse = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 5, 9)))
        with warnings.catch_warnings():  # sklearn's deprecation notices and non-converged folds on noise layers
            warnings.simplefilter("ignore")
            acc_log = float(cross_val_score(logistic, x, y, groups=group_ids, cv=folds, scoring="accuracy").mean())
            acc_mse = float(cross_val_score(mse, x, y, groups=group_ids, cv=folds, scoring="accuracy").mean())
            scaled = StandardScaler().fit_transform(x)
            clusters = KMeans(n_clusters=len(classes), n_init=10, random_state=seed).fit_predict(scaled)
        out.append(LayerScore(layer, acc_log, acc_mse, float(adjusted_rand_score(y, clusters)),
                              float(normalized_mutual_info_score(y, clusters)), chance=chance,
                              at_chance=max(acc_log, acc_mse) < above))
    return out


def recommend_layers(scores: Sequence[LayerScore], *, tolerance: float = 0.02,
                     max_layers: int | None = None) -> list[int]:
    """The best layer first, then any within ``tolerance`` of it (at most ``max_layers``).

    By default at most one layer in six, and never more than 4: a vector's push adds up
    over the layers it is on, so a shallow model steered on as many layers as a deep one
    is overdriven at the same alpha. On the 6-layer toy, 4 layers at alpha -6 sped the
    drums up instead of slowing them down; one layer sweeps monotonically."""
    if max_layers is None:
        max_layers = min(4, max(1, len(scores) // 6))
    # Ties go to the layer nearest the middle of the stack: steering work on MusicGen finds
    # middle layers steer best, and on the toy layer 0 reads timbre perfectly (the caption
    # is right there in its cross-attention) while steering it there is noise.
    middle = len(scores) // 2
    ranked = sorted(scores, key=lambda s: (-s.score, abs(s.layer - middle), s.layer))
    best = ranked[0].score
    return [s.layer for s in ranked if s.score >= best - tolerance][:max_layers]


def cosine_matrix(directions: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Cosine between every pair of named directions (each [d])."""
    names = list(directions)
    unit = {n: directions[n].float() / directions[n].float().norm().clamp_min(1e-12) for n in names}
    return {a: {b: round(float(unit[a] @ unit[b]), 4) for b in names} for a in names}
