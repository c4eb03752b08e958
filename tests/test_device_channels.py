"""Which channels a sound card is opened with for a set of stems, and which stem is on
which pair (bridge/live/device_channels.py), down to the ring and the DeviceOutput."""

from __future__ import annotations

import logging
import types
from typing import Any

import numpy as np
import pytest

from bridge.live import outputs
from bridge.live.device_channels import layout_line, opened_channels, parse_stem_channels, reports_own_channels, stem_pair
from bridge.live.ring import Ring
from steering_core.errors import UserError


def test_stem_channels_is_auto_mono_or_whole_pairs() -> None:
    assert parse_stem_channels("auto") is None
    assert [parse_stem_channels(n) for n in ("1", "2", "8", "64")] == [1, 2, 8, 64]
    for bad, phrase in (("3", "whole pairs"), ("0", "whole pairs"), ("66", "up to 64"), ("eight", "auto or a channel")):
        with pytest.raises(UserError, match=phrase):
            parse_stem_channels(bad)


def test_alsa_plugins_do_not_report_their_speakers() -> None:
    assert not reports_own_channels("pulse", "ALSA") and not reports_own_channels("default", "ALSA")
    assert reports_own_channels("Scarlett 18i8 USB: Audio (hw:1,0)", "ALSA")
    assert reports_own_channels("Scarlett 18i8 USB", "Core Audio")


def test_auto_gives_each_stem_a_pair_as_far_as_the_card_has_them() -> None:
    def auto(device_max: int, rows: int, own: bool = True) -> int:
        return opened_channels(device_max, rows, None, own_count=own, device="card")

    assert auto(8, 2) == 6 and auto(8, 3) == 8 and auto(8, 5) == 8  # the ring's channels, or the card's
    assert auto(5, 3) == 4 and auto(3, 2) == 2  # whole pairs only
    assert auto(1, 3) == 1  # a mono card plays the mix
    assert auto(32, 3, own=False) == 2  # ALSA's default/pulse: the mix, unless asked
    assert auto(8, 0) == 2 and auto(1, 0) == 1 and auto(32, 0, own=False) == 2  # one stream: as before


def test_asked_channels_are_opened_or_refused_in_one_line() -> None:
    assert opened_channels(32, 2, 8, own_count=False, device="'pulse'") == 8
    assert opened_channels(8, 5, 4, own_count=True, device="card") == 4
    with pytest.raises(UserError, match=r"^--stem-channels 8: 'USB' has 2 output channels$"):
        opened_channels(2, 3, 8, own_count=True, device="'USB'")


def test_each_row_has_its_pair_after_the_mix_and_the_line_says_who_is_where() -> None:
    assert [stem_pair(row, 6) for row in range(3)] == [[3, 4], [5, 6], None]
    names = ["drums", "bass", "keys"]
    assert layout_line("Card", 6, names) == "Card, 6 channels: mix 1-2, drums 3-4, bass 5-6; only in the mix: keys"
    assert layout_line("Card", 10, names) == "Card, 10 channels: mix 1-2, drums 3-4, bass 5-6, keys 7-8; 9-10 silent"
    line = layout_line("Card", 2, names)
    assert line.startswith("Card, 2 channels: mix 1-2; only in the mix: drums, bass, keys (--stem-channels N")
    assert layout_line("Card", 1, names) == "Card is opened mono: it plays the stems' mix"


def test_the_ring_fills_a_block_with_fewer_or_more_channels_than_it_has() -> None:
    ring = Ring(capacity=16, channels=4)
    ring.write(np.arange(32, dtype=np.float32).reshape(8, 4) + 1)
    fewer = np.full((4, 2), 9.0, np.float32)
    assert ring.read_into(fewer) == 4 and np.array_equal(fewer, (np.arange(16).reshape(4, 4) + 1)[:, :2])
    more = np.full((6, 6), 9.0, np.float32)
    assert ring.read_into(more) == 4  # four left, then the ring runs dry
    assert np.array_equal(more[:4, :4], np.arange(16, 32).reshape(4, 4) + 1)
    assert not more[:4, 4:].any() and not more[4:].any()


class FakeSounddevice:
    """What DeviceOutput asks of sounddevice before it opens a stream."""

    PortAudioError = RuntimeError

    def __init__(self, name: str, channels: int, hostapi: str) -> None:
        self.info = {"name": name, "max_output_channels": channels, "default_samplerate": 48000.0, "hostapi": 0}
        self.hostapi = hostapi

    def query_devices(self, _spec: Any, _kind: str) -> dict[str, Any]:
        return self.info

    def query_hostapis(self, _index: int) -> dict[str, Any]:
        return {"name": self.hostapi}

    def OutputStream(self, **kw: Any) -> Any:
        """A stream that never plays: the test calls its callback, as PortAudio's thread would."""
        self.opened = kw
        return types.SimpleNamespace(start=lambda: None, stop=lambda: None, close=lambda: None, latency=0.01)


def _card(monkeypatch, name: str, channels: int, hostapi: str = "ALSA") -> FakeSounddevice:
    card = FakeSounddevice(name, channels, hostapi)
    monkeypatch.setattr(outputs, "_sounddevice", lambda: card)
    return card


def test_a_mono_card_plays_the_mean_of_the_mixs_two_sides(monkeypatch) -> None:
    """A stereo chain's sides differ (a reverb's width): a mono card plays their mean, not the left."""
    card = _card(monkeypatch, "USB Mono (hw:2,0)", 1)
    out = outputs.open_output("hw:2,0")
    assert isinstance(out, outputs.DeviceOutput) and out.channels == 1
    ring = Ring(capacity=1024, channels=2)
    left, right = np.linspace(-0.5, 0.5, 300, dtype=np.float32), np.linspace(0.25, -0.75, 300, dtype=np.float32)
    ring.write(np.stack([left, right], axis=1))
    out.start(ring)
    assert card.opened["channels"] == 1
    callback = card.opened["callback"]
    block = np.full((256, 1), 9.0, np.float32)
    callback(block, 256, None, None)
    np.testing.assert_allclose(block[:, 0], (left[:256] + right[:256]) / 2, atol=1e-7)
    callback(block, 256, None, None)  # 44 samples left, then the ring runs dry: silence, not old samples
    np.testing.assert_allclose(block[:44, 0], (left[256:] + right[256:]) / 2, atol=1e-7)
    assert not block[44:].any()
    out.stop()


def test_a_card_opens_with_the_stems_pairs_and_logs_them(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, "steerbridge.audio")
    _card(monkeypatch, "USB Audio (hw:1,0)", 8)
    out = outputs.open_output("hw:1,0", stems=["drums", "bass"])
    assert isinstance(out, outputs.DeviceOutput) and out.channels == 6
    assert "USB Audio (hw:1,0), 6 channels: mix 1-2, drums 3-4, bass 5-6" in caplog.messages
    assert outputs.open_output("hw:1,0").channels == 2  # one stream: stereo, as before


def test_the_pulse_device_plays_the_mix_unless_channels_are_asked(monkeypatch) -> None:
    _card(monkeypatch, "pulse", 32)
    assert outputs.open_output("pulse", stems=["drums", "bass"]).channels == 2
    assert outputs.open_output("pulse", stems=["drums", "bass"], stem_channels=8).channels == 8


def test_asked_channels_a_card_lacks_are_refused_not_played_on_the_clock(monkeypatch) -> None:
    _card(monkeypatch, "USB Audio (hw:1,0)", 2)
    with pytest.raises(UserError, match="--stem-channels 4: 'USB Audio \\(hw:1,0\\)' has 2 output channels"):
        outputs.open_output("hw:1,0", stems=["drums", "bass"], stem_channels=4)
    for spec, stems in (("hw:1,0", []), ("jack", ["drums"]), ("none", ["drums"])):
        with pytest.raises(UserError, match="--stem-channels needs stems"):
            outputs.open_output(spec, stems=stems, stem_channels=4)
