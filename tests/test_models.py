"""Model loading: tiny, save/load through the real loader, clear offline errors."""

import pytest
import torch

from steering_core.model.loading import ModelLoadError, load_model
from steering_core.model.tiny import save_tiny
from steering_core.stream.decode_loop import MusicStream


def test_tiny_handle_shape(tiny) -> None:
    assert (tiny.sample_rate, tiny.frame_rate, tiny.num_codebooks) == (32000, 50.0, 4)
    assert tiny.d_model == 64 and tiny.num_layers == len(tiny.decoder_layers) == 4
    assert tiny.model.config.audio_encoder.num_quantizers == 4


def test_tiny_round_trip_through_folder(tiny, tmp_path) -> None:
    folder = save_tiny(tmp_path / "tiny")
    loaded = load_model(str(folder), device="cpu")
    a = tiny.model.state_dict()
    b = loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config_sha256 == tiny.config_sha256 and loaded.window_frames == tiny.window_frames
    codes_a = MusicStream(tiny, "same prompt", seed=5).generate_frames(20)
    codes_b = MusicStream(loaded, "same prompt", seed=5).generate_frames(20)
    assert torch.equal(codes_a, codes_b)


def test_offline_hub_id_is_one_clear_line() -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model("facebook/musicgen-small", device="cpu")
    text = str(err.value)
    assert "--model toy" in text and "\n" not in text


def test_missing_folder_and_bad_device() -> None:
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model("./no/such/folder")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            load_model("tiny", device="cuda")


def test_tiny_codec_tells_sounds_apart_both_ways(tiny) -> None:
    """Random codec weights must still give different codes for different audio (for
    labelled-audio analysis) and different audio for different codes (so steering is
    audible): the codebooks are initialised from the encoder's own embeddings."""
    import numpy as np

    from steering_core.codec.streaming import decode
    from steering_core.extract.labelled_audio import encode_codes

    t = np.arange(32000) / 32000
    low, high = (encode_codes(tiny, (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in (150, 3000))
    assert (low != high).float().mean() > 0.3
    g = torch.Generator().manual_seed(0)
    a, b = (decode(tiny, torch.randint(0, 128, (1, 4, 50), generator=g)) for _ in range(2))
    assert np.abs(a - b).mean() > 0.3 * np.abs(a).mean()
    embed = tiny.model.audio_encoder.quantizer.layers[0].codebook.embed
    assert (embed - embed.mean(0)).norm(dim=1).mean() > 0.5 * embed.norm(dim=1).mean()


def test_tiny_weights_do_not_depend_on_the_thread_count() -> None:
    """serve runs small models on one torch thread; tests and tools on more. The tiny
    model must be the same model in all of them (its codebooks come from float sums)."""
    from steering_core.model.tiny import build_tiny_model

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = build_tiny_model().state_dict()
        torch.set_num_threads(2)
        two = build_tiny_model().state_dict()
    finally:
        torch.set_num_threads(before)
    assert [k for k in one if not torch.equal(one[k], two[k])] == []
