"""Extraction recovers a planted direction; presets expand into enough pairs."""

import pytest
import torch

from steering_core.extract.concepts import ConceptError, available_concepts, load_concept
from steering_core.extract.extraction import METHODS, collect_activations, extract_vector


def planted(n: int = 1000, layers: int = 3, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(layers, d, generator=g), dim=-1)
    base = torch.randn(layers, d, generator=g) * 3
    # Classes that overlap (as real activations do): on cleanly separable data a probe's
    # weights are only pinned down up to the margin, whatever the method.
    pos = base + torch.randn(n, layers, d, generator=g) * 0.5 + 0.6 * direction
    neg = base + torch.randn(n, layers, d, generator=g) * 0.5 - 0.6 * direction
    return pos, neg, direction


@pytest.mark.parametrize("method", sorted(METHODS))
def test_recovers_planted_direction_and_swap_negates(method: str) -> None:
    # Probes need many more samples than dimensions to find the direction itself.
    pos, neg, direction = planted()
    found = METHODS[method](pos, neg)
    cos = (found * direction).sum(-1)
    assert (cos > 0.98).all(), cos  # 2000 rows in 32 dimensions: a probe's sampling noise is ~1 %
    swapped = METHODS[method](neg, pos)
    assert ((swapped * direction).sum(-1) < -0.98).all()


def test_presets_have_enough_distinct_pairs() -> None:
    names = available_concepts()
    assert {"tempo", "timbre"} <= set(names) and len(names) >= 6
    for name in names:
        preset = load_concept(name)
        pairs = preset.pairs()
        assert len(pairs) >= 32 and len(set(pairs)) == len(pairs)
        assert all(p != n for p, n in pairs)


@pytest.mark.parametrize("bad", ["../tempo", "/etc/passwd", "no such", ""])
def test_concept_names_are_names(bad: str) -> None:
    with pytest.raises(ConceptError):
        load_concept(bad)


def test_extract_on_tiny_model(tiny) -> None:
    preset = load_concept("tempo")
    acts = collect_activations(tiny, ["fast drums", "slow drums"], frames=8, progress=False)
    assert acts.shape == (2, tiny.num_layers, tiny.d_model) and torch.isfinite(acts).all()
    vec = extract_vector(tiny, preset, frames=8, progress=False, layers=(1, 2))
    assert vec.layers == (1, 2) and vec.n_pos == vec.n_neg == preset.n_pairs
    torch.testing.assert_close(vec.directions.norm(dim=-1), torch.ones(2))
    assert set(vec.stats) == {1, 2} and vec.model_config_sha256 == tiny.config_sha256


def _anisotropic_classes(scale: float, n: int = 200, d: int = 6, seed: int = 0):
    """Two Gaussian classes whose mean difference is NOT the best separating direction:
    one noisy axis carries most of the mean difference, a quiet axis the useful part."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2 * n, d, generator=g) * torch.tensor([5.0, 0.2, 1, 1, 1, 1])
    shift = torch.tensor([1.0, 0.3, 0, 0, 0, 0])
    pos, neg = noise[:n] + shift, noise[n:] - shift
    return (pos * scale)[:, None], (neg * scale)[:, None]  # [N, 1 layer, d]


def test_probes_find_the_discriminant_not_the_mean_difference_whatever_the_units() -> None:
    """Independent check: the direction of linear discriminant analysis, Σ⁻¹Δμ (computed
    here with numpy), separates these classes; the mean difference mostly does not. Real
    probes follow the discriminant, and rescaling the activations by 1e-3 (tiny's units)
    must not collapse them onto the mean difference."""
    import numpy as np

    from steering_core.extract.extraction import diffmean, probe_logistic, probe_mse

    for scale in (1.0, 1e-3):
        pos, neg = _anisotropic_classes(scale)
        x = torch.cat([pos, neg])[:, 0].double().numpy()
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        within = np.cov(np.vstack([x[y == 1] - x[y == 1].mean(0), x[y == 0] - x[y == 0].mean(0)]).T)
        lda = np.linalg.solve(within, x[y == 1].mean(0) - x[y == 0].mean(0))
        lda /= np.linalg.norm(lda)
        mean_diff = diffmean(pos, neg)[0].double().numpy()
        assert abs(mean_diff @ lda) < 0.5  # the test is only meaningful if the two differ
        for method in (probe_logistic, probe_mse):
            direction = method(pos, neg)[0].double().numpy()
            assert direction @ lda > 0.9, (method.__name__, scale, direction @ lda)
            assert abs(direction @ mean_diff) < 0.9, (method.__name__, scale)


def test_layer_scores_say_when_a_layer_is_at_chance() -> None:
    from steering_core.evaluate.probes import score_layers

    g = torch.Generator().manual_seed(1)
    acts = torch.randn(40, 2, 8, generator=g)
    labels = ["a"] * 20 + ["b"] * 20
    acts[:20, 1, 0] += 4.0  # layer 1 carries the label on one axis; layer 0 is noise
    scores = score_layers(acts, labels)
    assert scores[0].at_chance and scores[0].chance == 0.5
    assert not scores[1].at_chance and max(scores[1].acc_logistic, scores[1].acc_mse) > 0.9
