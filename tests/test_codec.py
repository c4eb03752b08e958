"""The codec path: our layer-by-layer EnCodec decode against ``EncodecModel.decode``."""

from __future__ import annotations

import pytest
import torch
from transformers import EncodecConfig, EncodecModel

from steering_core.codec.encodec_walk import can_walk, decode_codes
from steering_core.codec.streaming import decode
from steering_core.model.loading import fold_weight_norm, load_model


def reference(codec: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec.decode(codes[None], [None]).audio_values


@pytest.mark.parametrize("spec", ["toy", "tiny", "tiny-stereo"])
@pytest.mark.parametrize("frames", [1, 2, 5, 12, 37])
def test_walked_decode_is_encodec_decode_bit_for_bit(spec: str, frames: int) -> None:
    handle = load_model(spec, device="cpu")
    codec = handle.model.audio_encoder
    assert can_walk(codec)
    books = handle.num_codebooks // handle.audio_channels
    codes = torch.randint(0, codec.config.codebook_size, (2, books, frames), generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        ours = decode_codes(codec, codes)
    assert torch.equal(ours, reference(codec, codes))


@pytest.mark.parametrize("causal,pad_mode,norm,kernel", [(True, "reflect", "weight_norm", 7),
                                                         (False, "constant", "weight_norm", 6),
                                                         (False, "reflect", "time_group_norm", 4)])
def test_walked_decode_matches_other_encodec_variants(causal: bool, pad_mode: str, norm: str, kernel: int) -> None:
    """Causal padding, zero padding, group norm and even kernels (an uneven split of the
    padding): branches the shipped models never take."""
    torch.manual_seed(0)
    config = EncodecConfig(sampling_rate=800, upsampling_ratios=[4, 2], num_filters=4, hidden_size=8, codebook_size=16,
                           target_bandwidths=[2.0], use_causal_conv=causal, pad_mode=pad_mode, norm_type=norm,
                           kernel_size=kernel, last_kernel_size=kernel, residual_kernel_size=kernel // 2 + 1,
                           num_lstm_layers=1, dilation_growth_rate=2, num_residual_layers=2)
    codec = EncodecModel(config).eval()
    fold_weight_norm(codec)
    assert can_walk(codec)
    codes = torch.randint(0, 16, (1, 2, 7))
    with torch.inference_mode():
        assert torch.equal(decode_codes(codec, codes), reference(codec, codes))


def test_a_chunked_codec_goes_through_encodec_itself() -> None:
    config = EncodecConfig(sampling_rate=800, upsampling_ratios=[4, 2], num_filters=4, hidden_size=8, codebook_size=16,
                           target_bandwidths=[2.0], chunk_length_s=0.01, overlap=0.5)
    assert not can_walk(EncodecModel(config))


def test_stereo_decode_is_each_side_decoded_by_encodec() -> None:
    handle = load_model("tiny-stereo", device="cpu")
    codes = torch.randint(0, 64, (1, handle.num_codebooks, 6))
    codec = handle.model.audio_encoder
    expected = torch.cat([reference(codec, codes[:, ::2]), reference(codec, codes[:, 1::2])], dim=1)
    assert (decode(handle, codes) == expected.numpy()).all()


def test_serve_codec_chunk_sets_the_frames_per_decode(tiny, vectors_dir, tmp_path) -> None:
    """``serve --codec-chunk N``: parsed, handed to the decoder, shown in /status and logged."""
    import json
    import time

    from bridge.cli import build_parser
    from bridge.live.serve import ServeOptions, Server

    assert build_parser().parse_args(["serve", "--codec-chunk", "3"]).codec_chunk == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--codec-chunk", "0"])
    log = tmp_path / "set.jsonl"
    options = ServeOptions(model="tiny", vectors=[str(vectors_dir)], osc_port=0, audio_out="none", codec_chunk=3,
                           scenes_dir=str(tmp_path / "scenes"), status_line=False, log=str(log))
    server = Server(options, handle=tiny)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while server.status()["frames_generated"] < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = server.status()
    finally:
        server.stop()
    assert server.engine.decoder.chunk == 3 and status["codec_streaming"]["chunk_frames"] == 3
    assert status["frames_generated"] >= 12  # it played
    assert json.loads(log.read_text().splitlines()[0])["codec_streaming"]["chunk_frames"] == 3
