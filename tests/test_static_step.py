"""The static decode step: the same tokens as MusicStream and generate(), per-stream knobs,
whole-graph tracing, and CUDA graphs that check themselves (faked on the CPU)."""

import logging

import pytest
import torch

from steering_core.model.loading import load_model
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings, guide, sample
from steering_core.stream.static_step import StaticStream, UnsupportedSteering, count_graph_breaks, open_stream
from tests.test_stream import transformers_greedy_codes


def _vectors(handle, seed: int = 0) -> list[SteeringVector]:
    g = torch.Generator().manual_seed(seed)
    last = handle.num_layers - 1
    layer_sets = [(0, 1), (1, last), (last,)]
    return [SteeringVector(concept=f"c{i}", directions=torch.randn(len(ls), handle.d_model, generator=g), layers=ls)
            for i, ls in enumerate(layer_sets)]


def _steerer(handle, vectors) -> Steerer:
    steerer = Steerer(handle)
    steerer.add(vectors[0], alpha=2.0, cfg_mode="cond")
    steerer.add(vectors[1], alpha=-1.0, cfg_mode="both")
    steerer.add(vectors[2], alpha=0.5, cfg_mode="uncond")
    return steerer


def _performance(cls, handle, settings: SamplingSettings, vectors, **kw) -> torch.Tensor:
    """A sequence with knob moves, a rollback, prompt changes (longer, then shorter) and
    re-primes; returns every complete frame."""
    steerer = _steerer(handle, vectors)
    stream = cls(handle, "drums", seed=5, settings=settings, steerer=steerer, window_frames=50, reprime_frames=20, **kw)

    def on_frame(frame: int) -> None:
        if frame == 12:
            steerer.set_alpha("c0", 5.0)
        if frame == 30:
            steerer.set_enabled("c1", False)
        if frame == 75:
            steerer.set_alpha("c2", -3.0)

    with stream.steering():
        stream.generate_frames(40, on_frame=on_frame)
        assert stream.rollback(stream.next_frame - 8) > 0
        stream.generate_frames(15, on_frame=on_frame)
        stream.set_prompt("loud distorted guitars with a long prompt")
        stream.generate_frames(30, on_frame=on_frame)
        stream.set_prompt("calm")
        stream.generate_frames(25, on_frame=on_frame)
    assert stream.reprimes >= 2
    return stream.codes[:, :, :stream.frames_complete].clone()


@pytest.mark.parametrize("spec", ["tiny", "tiny-stereo"])
@pytest.mark.parametrize("settings", [
    SamplingSettings(guidance_scale=3.0, temperature=1.0, top_k=250),
    SamplingSettings(guidance_scale=2.0, temperature=0.7, top_k=20, top_p=0.9),
    SamplingSettings(guidance_scale=1.0, temperature=0.0),
], ids=["sampled", "top-p", "greedy-nocfg"])
def test_static_step_gives_the_loops_tokens(spec, settings) -> None:
    handle = load_model(spec, device="cpu") if spec != "tiny" else _tiny()
    vectors = _vectors(handle)
    loop = _performance(MusicStream, handle, settings, vectors)
    static = _performance(StaticStream, handle, settings, vectors)
    assert loop.shape == static.shape and torch.equal(loop, static)


_TINY: list = []


def _tiny():
    if not _TINY:
        _TINY.append(load_model("tiny", device="cpu"))
    return _TINY[0]


@pytest.mark.parametrize("spec", ["tiny", "tiny-stereo"])
def test_static_greedy_equals_transformers_generate(spec) -> None:
    handle = load_model(spec, device="cpu")
    n = 30
    ours = StaticStream(handle, "drums", seed=0, settings=SamplingSettings(guidance_scale=3.0, temperature=0.0))
    assert torch.equal(transformers_greedy_codes(handle, "drums", n), ours.generate_frames(n))


@pytest.mark.slow
def test_musicgen_small_static_equals_loop_and_generate() -> None:
    """A few frames of the real musicgen-small shape (random weights)."""
    handle = load_model("musicgen-small", device="cpu")
    n = 6
    greedy = SamplingSettings(guidance_scale=3.0, temperature=0.0)
    static = StaticStream(handle, "drums", seed=0, settings=greedy)
    assert torch.equal(transformers_greedy_codes(handle, "drums", n), static.generate_frames(n))
    # Sampled, steered, with a knob move, a rollback, a prompt change and a re-prime.
    settings = SamplingSettings(guidance_scale=3.0, top_k=250)
    vectors = _vectors(handle)

    def run(cls) -> torch.Tensor:
        steerer = _steerer(handle, vectors)
        stream = cls(handle, "drums", seed=1, settings=settings, steerer=steerer, window_frames=9, reprime_frames=4)
        with stream.steering():
            stream.generate_frames(3)
            steerer.set_alpha("c0", 4.0)
            stream.generate_frames(2)
            stream.rollback(stream.next_frame - 2)
            stream.set_prompt("bass")
            stream.generate_frames(4)
        assert stream.reprimes >= 1
        return stream.codes[:, :, :stream.frames_complete].clone()

    assert torch.equal(run(MusicStream), run(StaticStream))


def test_on_device_sampling_draws_what_sample_draws(tiny) -> None:
    """The static step's draw (argmax of p / noise, noise drawn before the step) against
    sampling.sample's torch.multinomial, same generator, several settings, in both of its
    forms: every stage (as a graph runs) and only the stages the settings turn on."""
    stream = StaticStream(tiny, "drums", seed=0)
    g = torch.Generator().manual_seed(0)
    for settings in (SamplingSettings(3.0, 1.0, 250, 0.0), SamplingSettings(3.0, 0.5, 5, 0.0),
                     SamplingSettings(1.5, 1.3, 0, 0.8), SamplingSettings(1.0, 0.9, 3, 0.5),
                     SamplingSettings(3.0, 0.0, 250, 0.0)):
        logits = torch.randn(2 * stream.batch, stream.num_codebooks, stream.vocab, generator=g) * 4
        stream.settings = settings
        stream.sampling.write(settings)
        ref_gen, our_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        ref = sample(guide(logits, settings.guidance_scale) if settings.uses_cfg else logits[:1], settings, ref_gen)
        if settings.temperature != 0.0:
            stream.sampling.noise.exponential_(1, generator=our_gen)
        for span in (None, stream.cache_len):  # as a graph runs it (every stage), and eagerly
            stream._span = span
            ours = stream._sample(logits)
            assert torch.equal(ref, ours), (settings, span)
        assert torch.equal(ref_gen.get_state(), our_gen.get_state())  # the generator moved alike


def test_the_race_draws_what_multinomial_draws() -> None:
    """sampling.sample's draw (argmax of p / exponential noise) against torch.multinomial on
    the same probabilities and generator: the same ids, and the generator moved alike."""
    g = torch.Generator().manual_seed(3)
    for settings in (SamplingSettings(3.0, 1.0, 250, 0.0), SamplingSettings(3.0, 0.7, 5, 0.0),
                     SamplingSettings(3.0, 1.2, 0, 0.9)):
        logits = torch.randn(2, 4, 300, generator=g) * 3
        ours_gen, ref_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        ours = sample(logits, settings, ours_gen)
        probs = logits / settings.temperature
        if settings.top_k:
            probs = probs.masked_fill(probs < torch.topk(probs, settings.top_k, dim=-1).values[..., -1:], -float("inf"))
        if settings.top_p:
            ordered, order = torch.sort(probs, descending=True, dim=-1)
            soft = ordered.softmax(dim=-1)
            drop = torch.zeros_like(soft, dtype=torch.bool).scatter(-1, order, soft.cumsum(dim=-1) - soft > settings.top_p)
            probs = probs.masked_fill(drop, -float("inf"))
        ref = torch.multinomial(probs.softmax(dim=-1).reshape(-1, 300), 1, generator=ref_gen).view(2, 4)
        assert torch.equal(ours, ref), settings
        assert torch.equal(ours_gen.get_state(), ref_gen.get_state())


def test_per_stream_knobs_give_each_row_what_it_gets_alone(tiny) -> None:
    """A batch of 3 streams, each with its own alphas and enables (and one moving mid-way):
    each row equals that stream run alone. Greedy, so the rows share no random draws."""
    vectors = _vectors(tiny, seed=3)
    greedy = SamplingSettings(guidance_scale=3.0, temperature=0.0)
    rows = [{"c0": 3.0, "c1": 0.0, "c2": 1.0}, {"c0": -2.0, "c1": 4.0, "c2": 0.0}, {"c0": 0.0, "c1": 1.0, "c2": -5.0}]
    enabled = [{"c2": False}, {}, {"c0": False}]

    def setup(stream: StaticStream, row: int, index: int) -> None:
        for name, alpha in rows[row].items():
            stream.steerer.set_alpha(name, alpha, stream=index)
        for name, on in enabled[row].items():
            stream.steerer.set_enabled(name, on, stream=index)

    def run(row_ids: list[int]) -> torch.Tensor:
        stream = StaticStream(tiny, ["drums"] * len(row_ids), seed=2, settings=greedy, steerer=_steerer(tiny, vectors))
        for index, row in enumerate(row_ids):
            setup(stream, row, index)
        with stream.steering():
            stream.generate_frames(20)
            if 1 in row_ids:  # stream 1 turns a knob mid-way
                stream.steerer.set_alpha("c2", 6.0, stream=row_ids.index(1))
            stream.generate_frames(20)
        return stream.codes[:, :, :stream.frames_complete].clone()

    batch = run([0, 1, 2])
    alone = [run([r]) for r in range(3)]
    for r in range(3):
        assert torch.equal(batch[r:r + 1], alone[r]), r
    assert not torch.equal(alone[0], alone[1]) and not torch.equal(alone[1], alone[2])


def test_knob_table_is_float32_and_follows_the_steerer() -> None:
    handle = load_model("tiny", device="cpu", dtype="bfloat16")
    steerer = _steerer(handle, _vectors(handle))
    stream = StaticStream(handle, ["a", "b"], steerer=steerer)
    steerer.set_alpha("c1", 1.1)
    assert stream.knobs.dtype == torch.float32
    assert stream.knobs[:, 1].tolist() == [pytest.approx(1.1, abs=1e-7)] * 2  # bf16 would hold 1.1016
    steerer.set_enabled("c0", False)
    assert stream.knob_enabled[:, 0].tolist() == [0.0, 0.0]


def test_other_operators_and_sites_are_refused_or_left_to_the_loop(tiny) -> None:
    steerer = Steerer(tiny)
    vec = _vectors(tiny)[0]
    steerer.add(vec, alpha=1.0, operator="renorm")
    with pytest.raises(UnsupportedSteering, match="renorm"):
        StaticStream(tiny, "drums", steerer=steerer)
    assert type(open_stream(tiny, "drums", steerer=steerer)) is MusicStream
    assert type(open_stream(tiny, "drums")) is StaticStream


def test_the_step_traces_whole(tiny) -> None:
    """torch._dynamo.explain over one steered, sampled step: zero graph breaks. Counting
    leaves the stream where it was: it then plays on exactly as one never counted."""
    settings = SamplingSettings(guidance_scale=3.0, top_k=50, top_p=0.9)
    vectors = _vectors(tiny)
    counted = StaticStream(tiny, "drums", seed=1, settings=settings, steerer=_steerer(tiny, vectors))
    plain = StaticStream(tiny, "drums", seed=1, settings=settings, steerer=_steerer(tiny, vectors))
    with counted.steering():
        counted.generate_frames(3)
        assert count_graph_breaks(counted) == 0
        counted.generate_frames(10)
    with plain.steering():
        plain.generate_frames(13)
    assert torch.equal(counted.codes[:, :, :13], plain.codes[:, :, :13])


@pytest.mark.slow
def test_compiled_step_gives_the_same_tokens(tiny) -> None:
    """torch.compile(fullgraph=True) of the step on the CPU: the CPU-side proof that the
    step is capturable, and that it computes the same thing."""
    kw = {"seed": 4, "window_frames": 40, "reprime_frames": 15,
          "settings": SamplingSettings(guidance_scale=3.0, temperature=1.0, top_k=50, top_p=0.95)}
    vectors = _vectors(tiny)
    eager = StaticStream(tiny, "drums", steerer=_steerer(tiny, vectors), **kw)
    compiled = StaticStream(tiny, "drums", steerer=_steerer(tiny, vectors), **kw)
    compiled._device_step = torch.compile(compiled._device_step, fullgraph=True)  # type: ignore[method-assign]
    for s in (eager, compiled):
        with s.steering():
            s.generate_frames(25)
            s.steerer.set_alpha("c1", 3.0)
            s.rollback(s.next_frame - 5)
            s.generate_frames(30)
    assert eager.reprimes >= 1 and torch.equal(eager.codes[:, :, :50], compiled.codes[:, :, :50])


class EagerRunner:
    """A 'graph' that just runs the step: what a correct capture must be equivalent to."""

    def __init__(self) -> None:
        self.step = None
        self.captures = 0

    def capture(self, step) -> None:
        self.step = step
        self.captures += 1
        step()  # a warm-up that moves the state on, as a real one does; the stream restores it

    def replay(self) -> None:
        self.step()


class WrongRunner(EagerRunner):
    """A captured path that is wrong on purpose: every token it writes is off by one."""

    def __init__(self, stream: StaticStream) -> None:
        super().__init__()
        self.stream = stream

    def replay(self) -> None:
        self.step()
        s = self.stream
        last = (s._pos_t - 1).view(1)
        s._tok.index_copy_(2, last, (s._tok.index_select(2, last) + 1) % s.vocab)


def _graph_run(runner_for, mode: str = "on") -> tuple[StaticStream, torch.Tensor]:
    made: list[StaticStream] = []
    stream = StaticStream(_tiny(), "drums", seed=8, window_frames=60, reprime_frames=25, cuda_graphs=mode,
                          graph_check_steps=6, graph_runner_factory=lambda: runner_for(made[0]))
    made.append(stream)
    codes = stream.generate_frames(100)
    return stream, codes.clone()


def test_a_graph_that_agrees_with_eager_is_replayed() -> None:
    runners = []

    def make(_stream):
        runners.append(EagerRunner())
        return runners[-1]

    stream, codes = _graph_run(make)
    eager = StaticStream(_tiny(), "drums", seed=8, window_frames=60, reprime_frames=25).generate_frames(100)
    assert stream.graph_state == "graph" and stream.graph_replays > 80 and len(runners) == 1
    assert torch.equal(codes, eager)


def test_a_wrong_graph_is_caught_and_the_stream_falls_back_to_eager(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="steering_core.stream.static_step"):
        stream, codes = _graph_run(WrongRunner)
    eager = StaticStream(_tiny(), "drums", seed=8, window_frames=60, reprime_frames=25).generate_frames(100)
    assert stream.graph_state == "eager" and stream.graph_replays == 0
    assert "tokens differ from eager" in stream.graph_fallback_reason
    lines = [r for r in caplog.records if "CUDA graphs off" in r.getMessage()]
    assert len(lines) == 1
    assert torch.equal(codes, eager)  # the check left no trace in the music


def test_a_capture_that_raises_falls_back_too(caplog) -> None:
    class Broken(EagerRunner):
        def capture(self, step) -> None:
            raise RuntimeError("operation not permitted when stream is capturing")

    with caplog.at_level(logging.WARNING, logger="steering_core.stream.static_step"):
        stream, _ = _graph_run(lambda s: Broken())
    assert stream.graph_state == "eager" and "capture failed" in stream.graph_fallback_reason


def test_cuda_graphs_modes_on_the_cpu(tiny) -> None:
    assert StaticStream(tiny, "drums", cuda_graphs="auto").graph_state == "eager"
    with pytest.raises(ValueError, match="CUDA"):
        StaticStream(tiny, "drums", cuda_graphs="on")
    with pytest.raises(ValueError, match="cuda_graphs"):
        StaticStream(tiny, "drums", cuda_graphs="sometimes")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


@requires_cuda
def test_cuda_graph_replay_matches_eager_on_the_gpu() -> None:
    handle = load_model("tiny", device="cuda", dtype="float32")
    kw = {"seed": 3, "window_frames": 80, "reprime_frames": 30}
    vectors = _vectors(handle)
    graphed = StaticStream(handle, "drums", steerer=_steerer(handle, vectors), cuda_graphs="on", **kw)
    eager = StaticStream(handle, "drums", steerer=_steerer(handle, vectors), cuda_graphs="off", **kw)
    for s in (graphed, eager):
        with s.steering():
            s.generate_frames(40)
            s.steerer.set_alpha("c0", -4.0)
            s.rollback(s.next_frame - 6)
            s.set_prompt("bass and drums")
            s.generate_frames(80)
    assert graphed.graph_state == "graph", graphed.graph_fallback_reason
    assert torch.equal(graphed.codes[:, :, :110], eager.codes[:, :, :110])


@requires_cuda
def test_cuda_bf16_static_step_matches_the_loop() -> None:
    handle = load_model("tiny", device="cuda", dtype="bfloat16")
    kw = {"seed": 3, "settings": SamplingSettings(temperature=0.0)}
    loop = MusicStream(handle, "drums", **kw).generate_frames(40)
    static = StaticStream(handle, "drums", cuda_graphs="auto", **kw).generate_frames(40)
    assert torch.equal(loop, static)
