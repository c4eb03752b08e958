"""Finding concept directions: record activations, then compare the two classes.

1. ``collect_activations`` runs prompts through a short seeded generation (batched,
   with CFG) and pools each layer's activation at one site over the generated frames,
   conditional rows only.
2. A *method* turns positive and negative activations [N, L, D] into unit directions
   [L, D]. Methods are plain functions in ``METHODS``: difference of means
   (Facchiano et al.), PCA of paired differences, and linear probes with a logistic
   or a squared loss (Panda et al.), whose weight vector is the direction.
3. ``extract_vector`` ties it to a concept preset and adds per-layer calibration.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from steering_core.errors import UserError
from steering_core.extract.concepts import ConceptPreset
from steering_core.model.loading import MusicGenHandle
from steering_core.steer.probe import fit_probe
from steering_core.steer.sites import SITES, attach
from steering_core.steer.vectors import LayerStats, SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
POOLING = ("mean", "last")


class _Pool:
    """Running pool of one layer's conditional-row activations."""

    def __init__(self, cond_rows: int, how: str) -> None:
        self.rows = cond_rows
        self.how = how
        self.total: torch.Tensor | None = None
        self.count = 0

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        x = h[: self.rows].float()  # CFG batch: conditional rows first
        if self.how == "last":
            self.total, self.count = x[:, -1], 1
        else:
            s = x.sum(dim=1)
            self.total = s if self.total is None else self.total + s
            self.count += x.shape[1]
        return h

    def value(self) -> torch.Tensor:
        assert self.total is not None, "no forward pass reached this site"
        return (self.total / self.count).cpu()


@contextmanager
def recording(handle: MusicGenHandle, site: str, rows: int, pool: str,
              layers: Sequence[int]) -> Iterator[list[_Pool]]:
    """Hooks that pool ``site`` activations at ``layers`` while the block runs."""
    pools = [_Pool(rows, pool) for _ in layers]
    with ExitStack() as stack:
        for layer, p in zip(layers, pools, strict=False):
            stack.callback(attach(handle.decoder_layers[layer], site, p).remove)
        yield pools


def collect_activations(handle: MusicGenHandle, prompts: Sequence[str], *, site: str = "resid_post",
                        frames: int = 50, seed: int = 0, batch_size: int = 8, pool: str = "mean",
                        settings: SamplingSettings | None = None, progress: bool = True,
                        desc: str = "activations") -> torch.Tensor:
    """Pooled activations [N, num_layers, d_model] for every layer at ``site``."""
    if site not in SITES:
        raise UserError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if pool not in POOLING:
        raise UserError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLING)}")
    layers = range(handle.num_layers)
    out = []
    batches = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress)):
        with recording(handle, site, len(batch), pool, layers) as pools:
            stream = MusicStream(handle, batch, seed=seed + i, settings=settings)
            stream.generate_frames(frames)
        out.append(torch.stack([p.value() for p in pools], dim=1))
    return torch.cat(out)


# --- methods: (positive [N, L, D], negative [M, L, D]) -> unit directions [L, D] ---------------
def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def diffmean(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean(pos) − mean(neg), per layer."""
    return _unit(pos.mean(0) - neg.mean(0))


def pca(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal axis of the paired differences pos_i − neg_i (uncentred, so the
    shared shift is what it finds), signed to agree with the mean difference."""
    n = min(len(pos), len(neg))
    diffs = (pos[:n] - neg[:n]).float()  # [n, L, D]
    rows = []
    for layer in range(diffs.shape[1]):
        _, _, vh = torch.linalg.svd(diffs[:, layer], full_matrices=False)
        axis = vh[0]
        if (diffs[:, layer].mean(0) @ axis) < 0:
            axis = -axis
        rows.append(axis)
    return _unit(torch.stack(rows))


def _probe(pos: torch.Tensor, neg: torch.Tensor, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> torch.Tensor:
    """A linear probe per layer, fit on standardised activations, its weights mapped back
    to activation units.

    Standardising makes the fit independent of the activations' scale: on raw activations
    whose class difference is ~1e-3, a fixed L2 penalty wins and the probe collapses onto
    the mean difference (cosine 1.0 with diffmean, whatever the data say). With z = (x -
    mu) / s, the probe's score w·z equals (w / s)·(x - mu), so w / s is the probe's
    direction in activation space, the space the steering adds to."""
    x = torch.cat([pos, neg]).float().numpy().astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    rows = []
    for layer in range(x.shape[1]):
        xl = x[:, layer]
        spread = xl.std(axis=0)
        spread = np.where(spread > 1e-12 * max(1.0, float(spread.max())), spread, np.inf)  # constant features carry nothing
        z = (xl - xl.mean(axis=0)) / spread
        weights = np.asarray(fit(z, y), dtype=np.float64).reshape(-1) / spread
        rows.append(torch.from_numpy(weights.astype(np.float32)))
    return _unit(torch.stack(rows))


def _cv_folds(y: np.ndarray) -> int:
    return max(2, min(5, int(np.min(np.unique(y, return_counts=True)[1]))))


def probe_logistic(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Weight vector of a per-layer logistic-regression probe (BCE loss), its L2 strength
    chosen per layer by stratified cross-validation of the log-loss over 13 values (accuracy
    ties on separable data and would pick the weakest fit that separates)."""
    from sklearn.linear_model import LogisticRegressionCV

    def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=_cv_folds(y), scoring="neg_log_loss",
                                        max_iter=5000).fit(x, y).coef_

    return _probe(pos, neg, fit)


def probe_mse(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Weight vector of a per-layer ridge probe onto ±1 labels (squared loss); the ridge
    strength is chosen per layer by generalised cross-validation, since activations are
    few and wide."""
    from sklearn.linear_model import RidgeCV

    alphas = np.logspace(-3, 5, 17)
    return _probe(pos, neg, lambda x, y: RidgeCV(alphas=alphas).fit(x, 2 * y - 1).coef_)


METHODS: dict[str, Method] = {
    "diffmean": diffmean,
    "pca": pca,
    "probe_logistic": probe_logistic,
    "probe_mse": probe_mse,
}


def layer_stats(pos: torch.Tensor, neg: torch.Tensor, directions: torch.Tensor) -> list[LayerStats]:
    """Per-layer calibration: typical ‖h‖ and where each class projects on the direction."""
    both = torch.cat([pos, neg]).float()
    out = []
    for layer in range(directions.shape[0]):
        v = directions[layer]
        pp, pn = pos[:, layer].float() @ v, neg[:, layer].float() @ v
        out.append(LayerStats(mean_norm=float(both[:, layer].norm(dim=-1).mean()),
                              proj_pos_mean=float(pp.mean()), proj_neg_mean=float(pn.mean()),
                              proj_std=float(torch.cat([pp, pn]).std())))
    return out


def extract_vector(handle: MusicGenHandle, preset: ConceptPreset, *, method: str = "diffmean",
                   site: str | None = None, layers: Sequence[int] | None = None, frames: int = 50,
                   seed: int = 0, batch_size: int = 8, pool: str = "mean",
                   progress: bool = True) -> SteeringVector:
    """A steering vector for ``preset`` on ``handle``'s model."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    site = site or preset.site
    chosen = tuple(layers) if layers is not None else preset.layers_for(handle.num_layers)
    bad = [layer for layer in chosen if not 0 <= layer < handle.num_layers]
    if bad or not chosen:
        raise UserError(f"layers {bad or list(chosen)} outside 0..{handle.num_layers - 1}")
    pairs = preset.pairs(seed)
    common: dict[str, Any] = dict(site=site, frames=frames, seed=seed, batch_size=batch_size, pool=pool, progress=progress)
    pos = collect_activations(handle, [p for p, _ in pairs], desc=f"{preset.name}: {preset.positive_label}", **common)
    neg = collect_activations(handle, [n for _, n in pairs], desc=f"{preset.name}: {preset.negative_label}", **common)
    return vector_from_activations(handle, preset.name, pos, neg, chosen, method=method, site=site, preset=preset,
                                   pool=pool, prompt_sha256=preset.prompt_sha256(seed))


def vector_from_activations(handle: MusicGenHandle, concept: str, pos: torch.Tensor, neg: torch.Tensor,
                            layers: Sequence[int], *, method: str = "diffmean", site: str = "resid_post",
                            preset: ConceptPreset | None = None, pool: str = "mean", prompt_sha256: str = "",
                            alpha_range: tuple[float, float] = (-4.0, 4.0), probe: bool = True) -> SteeringVector:
    """The vector on ``layers`` from pooled activations [N, num_layers, d] of each class: the
    one place where a direction becomes a ``SteeringVector`` (prompt sets, labelled audio
    and ``analyze`` all come here). A preset supplies operator, CFG mode and alpha range.
    With ``probe`` the file also carries a logistic probe for the concept, fitted on these
    same activations at the deepest of ``layers`` (``steer/probe.py``: a probe target reads it)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    idx = list(layers)
    directions = METHODS[method](pos[:, idx], neg[:, idx])
    stats = layer_stats(pos[:, idx], neg[:, idx], directions)
    aggregation = "mean_over_frames" if pool == "mean" else "last_frame"
    deepest = max(idx)
    return SteeringVector(
        concept=concept, directions=directions, layers=tuple(idx), site=site, method=method,
        operator=preset.operator if preset else "add", cfg_mode=preset.cfg_mode if preset else "cond",
        alpha_range=preset.alpha_range if preset else alpha_range,
        model_id=handle.model_id, model_config_sha256=handle.config_sha256,
        aggregation=aggregation, n_pos=len(pos), n_neg=len(neg), prompt_sha256=prompt_sha256,
        stats=dict(zip(idx, stats, strict=True)),
        probe=fit_probe(pos[:, deepest], neg[:, deepest], deepest, pool=aggregation) if probe else None,
    )
