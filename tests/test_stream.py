"""The streaming engine: determinism, endless runs, rollback, live changes, chunked decode."""

import numpy as np
import pytest
import torch

from steering_core.codec.streaming import ChunkedDecoder, decode
from steering_core.model.loading import load_model
from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import SteeringVector
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.sampling import SamplingSettings


def test_same_seed_same_tokens_and_other_seed_differs(tiny) -> None:
    a = MusicStream(tiny, "drums", seed=3).generate_frames(40)
    b = MusicStream(tiny, "drums", seed=3).generate_frames(40)
    c = MusicStream(tiny, "drums", seed=4).generate_frames(40)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_endless_past_the_trained_window(tiny) -> None:
    stream = MusicStream(tiny, "drums", seed=1)
    n = 3 * tiny.window_frames
    codes = stream.generate_frames(n)
    assert stream.reprimes >= 3 and codes.shape == (1, 4, n)
    assert (codes < 128).all() and (codes >= 0).all()  # never a pad token in the stream


def test_rollback_regenerates_identical_tokens(tiny) -> None:
    ref = MusicStream(tiny, "drums", seed=2).generate_frames(120).clone()
    stream = MusicStream(tiny, "drums", seed=2)
    stream.generate_frames(100)
    assert stream.rollback(70) == 70 and stream.frames_complete == 70 - 3
    assert stream.next_frame == 70
    stream.generate_frames(53)
    assert torch.equal(stream.codes[:, :, :120], ref)


def test_alpha_change_at_frame_k(tiny) -> None:
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector(concept="c", directions=torch.randn(2, tiny.d_model, generator=g), layers=(1, 2))
    k = 30

    def run(change: bool) -> torch.Tensor:
        steerer = Steerer(tiny)
        steerer.add(vec, alpha=0.0)
        stream = MusicStream(tiny, "drums", seed=9, steerer=steerer)

        def on_frame(frame: int) -> None:
            if change and frame == k:
                steerer.set_alpha("c", 6.0)

        with steerer.installed():
            return stream.generate_frames(80, on_frame=on_frame).clone()

    plain, changed = run(False), run(True)
    assert torch.equal(plain[:, 0, :k], changed[:, 0, :k])  # codebook 0 before k untouched
    assert torch.equal(plain[:, :, : k - 3], changed[:, :, : k - 3])  # every codebook's frames that were out
    assert not torch.equal(plain[:, :, k:], changed[:, :, k:])


def test_prompt_change_mid_stream(tiny) -> None:
    a = MusicStream(tiny, "calm piano", seed=4)
    b = MusicStream(tiny, "calm piano", seed=4)
    a.generate_frames(60)
    b.generate_frames(60)
    b.set_prompt("loud distorted guitars")
    a.generate_frames(60)
    b.generate_frames(60)
    assert torch.equal(a.codes[:, :, :60], b.codes[:, :, :60])
    assert not torch.equal(a.codes[:, :, 60:120], b.codes[:, :, 60:120])
    assert b.frames_complete == 120


def test_chunked_decode_matches_one_shot(tiny) -> None:
    codes = MusicStream(tiny, "drums", seed=1).generate_frames(300)
    ref = decode(tiny, codes)
    dec = ChunkedDecoder(tiny)
    parts = []
    for i in range(0, 300, 7):
        dec.push(codes[:, :, i:i + 7])
        parts.append(dec.pull())
    parts.append(dec.pull(final=True))
    out = np.concatenate(parts, axis=-1)
    assert out.shape == ref.shape
    edge = 640 * 50
    err = out[..., edge:-edge] - ref[..., edge:-edge]
    snr = 10 * np.log10(np.sum(ref[..., edge:-edge] ** 2) / max(np.sum(err ** 2), 1e-30))
    assert snr >= 30.0, snr


class GatherEveryStep(MusicStream):
    """The reference: every step's input gathered from the codes, no shortcut."""

    def _write(self, tokens: torch.Tensor) -> None:
        super()._write(tokens)
        self._next_ids = None


def test_the_steady_state_input_shortcut_matches_the_full_gather(tiny) -> None:
    kw = {"seed": 6, "window_frames": 50, "reprime_frames": 20}
    fast, ref = MusicStream(tiny, "drums", **kw), GatherEveryStep(tiny, "drums", **kw)
    for s in (fast, ref):
        s.generate_frames(70)
        s.rollback(60)
        s.generate_frames(90)
    assert fast.reprimes >= 2 and torch.equal(fast.codes[:, :, :150], ref.codes[:, :, :150])


def test_lean_decoder_forward_matches_transformers_own(tiny) -> None:
    class ThroughTransformers(MusicStream):
        def _decoder_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
            out = self.handle.model.decoder(input_ids=input_ids, encoder_hidden_states=self.encoder_states,
                                            encoder_attention_mask=self.encoder_mask, past_key_values=self.cache,
                                            use_cache=True)
            return out.logits[:, -1].reshape(2 * self.batch, self.num_codebooks, -1)

    kw = {"seed": 8, "window_frames": 40, "reprime_frames": 20}
    a, b = MusicStream(tiny, "drums", **kw).generate_frames(120), ThroughTransformers(tiny, "drums", **kw).generate_frames(120)
    assert torch.equal(a, b)


def transformers_greedy_codes(handle, prompt: str, n: int, guidance: float = 3.0) -> torch.Tensor:
    """The first ``n`` frames transformers' own greedy ``generate()`` makes for ``prompt``,
    as [1, K, n] in real frame time (captured where generate() hands them to the codec)."""
    captured = []
    codec_decode = handle.model.audio_encoder.decode

    def capture(codes, *args, **kwargs):
        captured.append(codes.clone())
        return codec_decode(codes, *args, **kwargs)

    handle.model.audio_encoder.decode = capture
    try:
        inputs = handle.tokenizer([prompt], return_tensors="pt").to(handle.device)
        handle.model.generate(**inputs, do_sample=False, guidance_scale=guidance,
                              max_new_tokens=n + handle.num_codebooks // handle.audio_channels + 8)
    finally:
        del handle.model.audio_encoder.decode  # back to the class's own method
    if handle.audio_channels == 2:  # generate() decodes left (::2) and right (1::2) apart
        theirs = torch.empty((1, handle.num_codebooks, captured[0].shape[-1]), dtype=torch.long)
        theirs[:, ::2], theirs[:, 1::2] = captured[0][0], captured[1][0]
    else:
        theirs = captured[0][0]
    return theirs[:, :, :n]


@pytest.mark.parametrize("spec", ["tiny", "tiny-stereo"])
def test_greedy_stream_equals_transformers_generate(spec) -> None:
    """An independent check of the delay pattern (mono: d(k) = k; stereo: interleaved
    left/right, d(k) = k // 2) and of CFG: with greedy sampling our loop must produce
    exactly the codes transformers' own generate() does."""
    handle = load_model(spec, device="cpu")
    n = 30
    ours = MusicStream(handle, "drums", seed=0, settings=SamplingSettings(guidance_scale=3.0, temperature=0.0))
    assert torch.equal(transformers_greedy_codes(handle, "drums", n), ours.generate_frames(n))


def test_stereo_streams_endlessly_and_decodes_to_two_channels() -> None:
    handle = load_model("tiny-stereo", device="cpu")
    stream = MusicStream(handle, "drums", seed=1, window_frames=60, reprime_frames=30)
    codes = stream.generate_frames(150)
    assert stream.max_delay == 3 and codes.shape == (1, 8, 150) and (codes < 128).all() and stream.reprimes >= 2
    target = stream.next_frame - 5
    assert stream.rollback(target) == target and stream.frames_complete == target - 3
    audio = decode(handle, codes)
    assert audio.shape == (1, 2, 150 * 640)


def test_inline_residual_steering_equals_the_hooks(tiny) -> None:
    """``stream.steering()`` adds resid_post offsets in the decode loop, not by hook: the
    tokens must be identical to steering through hooks alone, with a mix of sites,
    operators, CFG modes and a live knob move."""
    g = torch.Generator().manual_seed(1)

    def vec(concept: str, layers: tuple[int, ...], site: str = "resid_post") -> SteeringVector:
        return SteeringVector(concept=concept, directions=torch.randn(len(layers), tiny.d_model, generator=g),
                              layers=layers, site=site)

    vectors = [vec("a", (0, 1, 2)), vec("b", (1, 3)), vec("c", (2,)), vec("d", (0, 3), site="mlp_out")]

    def run(inline: bool) -> tuple[torch.Tensor, int]:
        steerer = Steerer(tiny)
        steerer.add(vectors[0], alpha=2.0, cfg_mode="cond")
        steerer.add(vectors[1], alpha=-1.5, cfg_mode="both")
        steerer.add(vectors[2], alpha=3.0, operator="renorm")  # layer 2 keeps its hook: not a plain add
        steerer.add(vectors[3], alpha=1.0)
        stream = MusicStream(tiny, "drums", seed=11, steerer=steerer)

        def on_frame(frame: int) -> None:
            if frame == 25:
                steerer.set_alpha("b", 4.0)
                steerer.set_enabled("a", False)

        with stream.steering() if inline else steerer.installed():
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.decoder.modules())
            codes = stream.generate_frames(60, on_frame=on_frame).clone()
        return codes, hooks

    (inline, inline_hooks), (hooked, hooked_hooks) = run(True), run(False)
    assert torch.equal(inline, hooked)
    # Hooked: layers 0-3 resid_post, 2 mlp_out, the knob pre-hook. Inline: layer 2 and the mlp_outs only.
    assert (inline_hooks, hooked_hooks) == (3, 7)
    plain = MusicStream(tiny, "drums", seed=11).generate_frames(60)
    assert not torch.equal(inline, plain)


def test_inline_steering_is_removed_and_not_nested(tiny) -> None:
    g = torch.Generator().manual_seed(2)
    steerer = Steerer(tiny)
    steerer.add(SteeringVector(concept="c", directions=torch.randn(1, tiny.d_model, generator=g), layers=(1,)),
                alpha=5.0)
    stream = MusicStream(tiny, "drums", seed=3, steerer=steerer)
    with pytest.raises(RuntimeError, match="resid_inline"):
        steerer.layer_offsets(2)
    with stream.steering():
        assert steerer.is_installed and steerer.resid_inline
        with pytest.raises(RuntimeError, match="already installed"), steerer.installed():
            pass
    assert not steerer.is_installed and not steerer.resid_inline
    # Outside the block the loop adds nothing: the stream plays as if unsteered.
    assert torch.equal(stream.generate_frames(20), MusicStream(tiny, "drums", seed=3).generate_frames(20))
