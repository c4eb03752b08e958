"""A concept's probe: fitted by extract, kept in the vector file, read every step on the steered layer."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from steering_core.steer.probe import LinearProbe, fit_probe
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import METADATA_KEY, SteeringVector, VectorFileError, load_vector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.probe_tap import ProbeTaps
from steering_core.stream.sampling import SamplingSettings
from steering_core.stream.static_step import StaticStream


def _probe(tiny, layer: int, seed: int) -> LinearProbe:
    g = torch.Generator().manual_seed(seed)
    return LinearProbe(layer, torch.randn(tiny.d_model, generator=g) * 0.05, 0.3 - 0.1 * seed, {"method": "test"})


def test_fit_probe_separates_and_is_in_raw_units() -> None:
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(16)
    shift[3] = 0.02  # a small class difference on activations of large scale, as on a real layer
    pos = torch.randn(20, 16, generator=g) * 0.01 + 5.0 + shift
    neg = torch.randn(20, 16, generator=g) * 0.01 + 5.0 - shift
    probe = fit_probe(pos, neg, layer=2)
    assert probe.info["train_accuracy"] >= 0.95
    assert (probe.probability(pos) > 0.5).float().mean() >= 0.9
    assert (probe.probability(neg) < 0.5).float().mean() >= 0.9
    assert probe.weights.abs().argmax().item() == 3


def test_vector_file_keeps_the_probe_and_old_files_still_load(vectors_dir, tmp_path) -> None:
    vector = load_vector(vectors_dir / "tempo.safetensors")
    assert vector.probe is not None, "extract fits a probe on the vector's deepest layer"
    assert vector.probe.layer == max(vector.layers)
    again = load_vector(vector.save(tmp_path / "again.safetensors"))
    assert again.probe is not None
    assert torch.equal(again.probe.weights, vector.probe.weights) and again.probe.bias == vector.probe.bias
    assert again.probe.info == vector.probe.info
    # A file from before probes (no probe tensors, no probe metadata) loads without one.
    tensors = load_file(str(tmp_path / "again.safetensors"))
    meta = vector.metadata()
    del meta["probe"]
    for key in ("probe_weights", "probe_bias"):
        del tensors[key]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: __import__("json").dumps(meta)})
    assert load_vector(tmp_path / "old.safetensors").probe is None
    # Half a probe is a broken file.
    tensors["probe_weights"] = vector.probe.weights
    save_file(tensors, str(tmp_path / "half.safetensors"), metadata={METADATA_KEY: __import__("json").dumps(meta)})
    with pytest.raises(VectorFileError, match="probe"):
        load_vector(tmp_path / "half.safetensors")
    # Algebra makes another concept: its probe would read the old one.
    assert (-vector).probe is None and (vector * 2.0).probe is not None


@pytest.mark.parametrize("stream_class", [MusicStream, StaticStream])
def test_probe_read_equals_the_hooked_activation_by_hand(tiny, vectors_dir, stream_class) -> None:
    """The tap's probability is sigmoid(mean(h_cond) · w + b) for h the layer's output as the
    next module receives it (steering included), caught here by an ordinary forward pre-hook."""
    vector = load_vector(vectors_dir / "timbre.safetensors")
    layer = max(vector.layers)
    last = tiny.num_layers - 1
    assert vector.probe is not None and layer < last
    probes = {"timbre": vector.probe, "other": _probe(tiny, last, 1)}
    steerer = Steerer(tiny)
    steerer.add(vector, alpha=3.0)
    stream = stream_class(tiny, ["drums", "piano"], seed=1, steerer=steerer, settings=SamplingSettings(guidance_scale=3.0))
    stream.taps = taps = ProbeTaps(probes, stream.batch, tiny.num_layers, tiny.device)
    decoder = stream._decoder
    seen: dict[str, torch.Tensor] = {}
    # The static step calls no layer module, but the final layer norm is a module call: what it
    # receives is the last layer's steered output. The loop calls every layer: the next layer's input.
    hooks = [decoder.layer_norm.register_forward_pre_hook(lambda _m, a: seen.__setitem__("other", a[0].clone()))]
    if stream_class is MusicStream:
        hooks.append(decoder.layers[layer + 1].register_forward_pre_hook(
            lambda _m, a: seen.__setitem__("timbre", a[0].clone())))
    try:
        with stream.steering():
            for _ in range(6):
                stream.step()
                got = taps.read(1)
                for name in seen:
                    h = seen[name][: stream.batch].float().mean(dim=1)[1]
                    p = probes[name]
                    by_hand = 1 / (1 + math.exp(-(float(h.double() @ p.weights.double()) + p.bias)))
                    assert got[name] == pytest.approx(by_hand, abs=1e-5), name
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == ({"timbre", "other"} if stream_class is MusicStream else {"other"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")
def test_probe_taps_in_a_captured_cuda_graph_read_what_eager_reads() -> None:
    """A captured graph replays the taps it was traced with: the mean logits since the last
    read, accumulated on the device across replays, equal an eager stream's, read for read."""
    from steering_core.model.loading import load_model

    handle = load_model("tiny", device="cuda", dtype="float32")
    last = handle.num_layers - 1
    probes = {"a": _probe(handle, 1, 0), "b": _probe(handle, last, 1)}
    g = torch.Generator().manual_seed(0)
    vector = SteeringVector(concept="c", directions=torch.randn(2, handle.d_model, generator=g), layers=(0, 1))
    readings = {}
    for mode in ("on", "off"):
        steerer = Steerer(handle)
        steerer.add(vector, alpha=2.0)
        stream = StaticStream(handle, "drums", seed=3, steerer=steerer, cuda_graphs=mode, window_frames=80,
                              reprime_frames=30)
        stream.taps = taps = ProbeTaps(probes, stream.batch, handle.num_layers, handle.device)
        got = []
        with stream.steering():
            for _ in range(4):
                stream.generate_frames(10)
                got.append(taps.read_mean())
        if mode == "on":
            assert stream.graph_state == "graph", stream.graph_fallback_reason
        readings[mode] = got
    for graphed, eager in zip(readings["on"], readings["off"], strict=True):
        assert graphed is not None and eager is not None
        for name in probes:
            assert graphed[name] == pytest.approx(eager[name], abs=1e-5), name
