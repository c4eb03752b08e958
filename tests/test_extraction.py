"""Extraction recovers a planted direction; presets expand into enough pairs."""

import pytest
import torch

from steering_core.concepts import ConceptError, available_concepts, load_concept
from steering_core.extraction import METHODS, collect_activations, extract_vector


def planted(n: int = 1000, layers: int = 3, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(layers, d, generator=g), dim=-1)
    base = torch.randn(layers, d, generator=g) * 3
    pos = base + torch.randn(n, layers, d, generator=g) * 0.5 + 2.0 * direction
    neg = base + torch.randn(n, layers, d, generator=g) * 0.5 - 2.0 * direction
    return pos, neg, direction


@pytest.mark.parametrize("method", sorted(METHODS))
def test_recovers_planted_direction_and_swap_negates(method: str) -> None:
    # Probes need many more samples than dimensions to find the direction itself.
    pos, neg, direction = planted()
    found = METHODS[method](pos, neg)
    cos = (found * direction).sum(-1)
    assert (cos > 0.99).all(), cos
    swapped = METHODS[method](neg, pos)
    assert ((swapped * direction).sum(-1) < -0.99).all()


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
