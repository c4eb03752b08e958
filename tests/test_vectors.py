"""The vector file format, its refusals, and the algebra."""

import json

import pytest
import torch
from safetensors.torch import save_file

from steering_core.model.loading import config_fingerprint
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector, VectorFileError, VectorMismatchError, load_vector, load_vectors


def vec(d=64, layers=(1, 2), seed=0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(concept=kw.pop("concept", "tempo"), directions=torch.randn(len(layers), d, generator=g),
                          layers=layers, **kw)


def test_round_trip(tmp_path) -> None:
    v = vec(alpha_range=(-3.0, 5.0), operator="mix", site="attn_out", model_id="tiny", model_config_sha256="ab" * 32)
    path = v.save(tmp_path / "v.safetensors")
    back = load_vector(path)
    assert torch.equal(back.directions, v.directions) and back.layers == v.layers
    assert back.metadata() == {**v.metadata(), "created": back.created}
    assert load_vectors(tmp_path)[0].concept == "tempo"


def test_refuses_mismatched_model(tiny, tmp_path) -> None:
    wrong_width = vec(d=32, model_id="other")
    with pytest.raises(VectorMismatchError, match="d_model=64"):
        Steerer(tiny).add(wrong_width)
    with pytest.raises(VectorMismatchError, match="layers"):
        Steerer(tiny).add(vec(layers=(9,)))
    other_cfg = vec(model_id="musicgen-small", model_config_sha256="0" * 64)
    with pytest.raises(VectorMismatchError, match="built for musicgen-small"):
        Steerer(tiny).add(other_cfg)
    Steerer(tiny).add(vec(model_config_sha256=config_fingerprint(tiny.model.config)))


def test_corrupt_and_foreign_files(tmp_path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(VectorFileError, match="not a readable"):
        load_vector(tmp_path / "junk.safetensors")
    save_file({"directions": torch.randn(2, 8)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(VectorFileError, match="no 'steerbridge' metadata"):
        load_vector(tmp_path / "plain.safetensors")
    meta = vec(d=8).metadata()
    save_file({"directions": torch.randn(2, 8), "layers": torch.tensor([1, 2])}, str(tmp_path / "nan.safetensors"),
              metadata={"steerbridge": json.dumps(meta)})
    load_vector(tmp_path / "nan.safetensors")  # well-formed: loads
    save_file({"directions": torch.full((2, 8), float("nan")), "layers": torch.tensor([1, 2])},
              str(tmp_path / "nan.safetensors"), metadata={"steerbridge": json.dumps(meta)})
    with pytest.raises(VectorFileError, match="NaN"):
        load_vector(tmp_path / "nan.safetensors")
    with pytest.raises(VectorFileError, match="no such"):
        load_vector(tmp_path / "missing.safetensors")


def test_algebra() -> None:
    a, b = vec(seed=1), vec(seed=2, concept="timbre")
    s = a + b
    expected = a.directions + b.directions
    torch.testing.assert_close(s.directions, expected / expected.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(torch.tensor(s.gains), expected.norm(dim=-1))
    torch.testing.assert_close((-a).directions, -a.directions)
    assert (a * 2.0).gains == (2.0, 2.0) and torch.equal((a * -2.0).directions, -a.directions)
    o = a.orthogonalized(b)
    assert o.cosine(b).abs().max() < 1e-6
    doubled = a + a
    torch.testing.assert_close(doubled.directions, a.directions)
    torch.testing.assert_close(torch.tensor(doubled.gains), torch.full((2,), 2.0))
    with pytest.raises(VectorFileError, match="zero length"):
        a - a
