"""Operators against an independent numpy computation, and their identities."""

import numpy as np
import pytest
import torch

from steering_core.steer.operators import OPERATORS

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
        return (h + a * n * v) / (1 + abs(a))
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


@pytest.mark.parametrize("alpha", [-1.0, -3.0, -0.375])
def test_mix_is_finite_and_never_grows_the_norm_for_negative_alpha(alpha: float) -> None:
    h = torch.from_numpy(H)
    out = OPERATORS["mix"](h, torch.from_numpy(V), torch.tensor(alpha, dtype=torch.float64))
    assert torch.isfinite(out).all()
    assert (out.norm(dim=-1) <= h.norm(dim=-1) * (1 + 1e-12)).all()


# --- gains: a vector scaled by algebra acts as the same knob turned gain times as far ---------------
@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("alpha", [-1.0, 0.6, 2.0])
def test_a_vector_with_a_gain_steers_as_alpha_times_gain(tiny, name: str, alpha: float) -> None:
    """Through the real steerer on the tiny decoder: the activation after steering must be
    the numpy reference with the unit direction and strength alpha * gain."""
    from steering_core.steer.steerer import Steerer
    from tests.test_steering import decoder_inputs, make_vector, record

    layer = 2
    a = make_vector(tiny, layers=(layer,), seed=1, concept="a", operator=name)
    b = make_vector(tiny, layers=(layer,), seed=2, concept="b", operator=name)
    combined = (a * 2.5 + b) * 0.8  # gain != 1, direction not a's or b's
    gain = combined.gains[0]
    assert abs(gain - 1.0) > 0.1
    inputs = decoder_inputs(tiny)
    h = record(tiny, layer, "resid_post", inputs).double().numpy()
    steerer = Steerer(tiny)
    steerer.add(combined, alpha=alpha, cfg_mode="both", name="mixed")
    with steerer.installed():
        out = record(tiny, layer, "resid_post", inputs).double().numpy()
    unit = combined.directions[0].double().numpy()
    np.testing.assert_allclose(out, reference(name, h, unit, alpha * gain), rtol=1e-4, atol=1e-4)


def test_clamp_with_a_gain_sets_the_projection(tiny) -> None:
    from steering_core.steer.steerer import Steerer
    from tests.test_steering import decoder_inputs, make_vector, record

    vector = make_vector(tiny, layers=(1,), seed=4, operator="clamp") * 3.0
    inputs = decoder_inputs(tiny)
    steerer = Steerer(tiny)
    steerer.add(vector, alpha=0.5, cfg_mode="both")
    with steerer.installed():
        out = record(tiny, 1, "resid_post", inputs)
    projection = out @ vector.directions[0]
    torch.testing.assert_close(projection, torch.full_like(projection, 1.5), rtol=1e-4, atol=1e-4)
