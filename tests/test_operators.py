"""Operators against an independent numpy computation, and their identities."""

import numpy as np
import pytest
import torch

from steering_core.operators import OPERATORS

rng = np.random.default_rng(0)
H = rng.normal(size=(3, 5, 16)).astype(np.float64)
V = rng.normal(size=16)
V /= np.linalg.norm(V)


def reference(name: str, h: np.ndarray, v: np.ndarray, a: float) -> np.ndarray:
    p = (h @ v)[..., None]
    n = np.linalg.norm(h, axis=-1, keepdims=True)
    if name == "add":
        return h + a * v
    if name == "add_norm_scaled":
        return h + a * n * v
    if name == "mix":
        return (h + a * n * v) / (1 + a)
    if name == "renorm":
        m = h + a * v
        return m * n / np.linalg.norm(m, axis=-1, keepdims=True)
    if name == "ablate":
        return h - a * p * v
    if name == "steer_back":
        return h - a * np.maximum(p, 0) * v
    if name == "clamp":
        return h + (a - p) * v
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("alpha", [-2.5, 0.7, 3.0])
def test_operator_matches_reference(name: str, alpha: float) -> None:
    out = OPERATORS[name](torch.from_numpy(H), torch.from_numpy(V), torch.tensor(alpha, dtype=torch.float64))
    np.testing.assert_allclose(out.numpy(), reference(name, H, V, alpha), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(set(OPERATORS) - {"clamp"}))
def test_alpha_zero_is_exact_identity(name: str) -> None:
    h = torch.randn(2, 3, 16)
    v = torch.from_numpy(V).float()
    assert torch.equal(OPERATORS[name](h, v, torch.tensor(0.0)), h)


def test_renorm_keeps_norm_and_ablate_removes_component() -> None:
    h = torch.randn(4, 7, 16, dtype=torch.float64)
    v = torch.from_numpy(V)
    out = OPERATORS["renorm"](h, v, torch.tensor(5.0, dtype=torch.float64))
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1))
    assert not torch.allclose(out, h)
    gone = OPERATORS["ablate"](h, v, torch.tensor(1.0, dtype=torch.float64))
    assert (gone @ v).abs().max() < 1e-12
