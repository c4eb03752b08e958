"""How many channels a sound card is opened with, and which stem is on which pair.

A set of stems fills one ring with ``[mix L, mix R, stem 1 L, stem 1 R, ...]`` in row
order (``stem_mix.StemMix``), and the device callback copies the ring's first channels
into the device's (``Ring.read_into``). So the layout is the opened channel count alone:
the mix on channels 1-2 and row ``r``'s stem on ``2r+3``-``2r+4``, as far as whole pairs
fit; a stem past the last pair is only in the mix. That is what a producer with an
8-out interface routes: inputs 3-4, 5-6, ... to DAW tracks, in the set's stem order.

How many: ``--stem-channels N`` opens exactly N (refused when the device has fewer);
``auto`` opens as many of the ring's channels as the device has. ALSA's plugin devices
(``default``, ``pulse``, ``dmix``, ...) report a channel count (32) that says nothing of
the speakers behind them, and a stereo system would fold the extra channels into its
two, so under ``auto`` they play the mix; ``--stem-channels N`` opens them with N.
"""

from __future__ import annotations

from collections.abc import Sequence

from steering_core.errors import UserError

STEREO = 2
#: More than any interface has; a typo such as 800 is one clear line, not a PortAudio error.
MAX_CHANNELS = 64


def parse_stem_channels(text: str) -> int | None:
    """``--stem-channels``: ``auto`` -> None, else a channel count: 1 (mono), or an even number."""
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"--stem-channels {text!r}: auto or a channel count (2, 4, 8, ...)") from None
    if not (n == 1 or (STEREO <= n <= MAX_CHANNELS and n % STEREO == 0)):
        raise UserError(f"--stem-channels {n}: 1 or an even count of channels up to {MAX_CHANNELS} (whole pairs)")
    return n


def reports_own_channels(name: str, hostapi: str) -> bool:
    """False for an ALSA plugin device (no ``hw:`` in its name): its count is not the speakers'."""
    return "ALSA" not in hostapi or "hw:" in name


def opened_channels(device_max: int, rows: int, asked: int | None, *, own_count: bool, device: str) -> int:
    """The channels to open a device with for ``rows`` stem rows (0: one stream, as before:
    stereo, or mono on a mono device). ``asked``: ``--stem-channels``, None for auto."""
    if asked is not None:
        if asked > device_max:
            raise UserError(f"--stem-channels {asked}: {device} has {device_max} output channel"
                            f"{'s' if device_max != 1 else ''}")
        return asked
    if rows == 0 or not own_count:
        return max(1, min(STEREO, device_max))
    n = min(device_max, STEREO * (1 + rows))
    return max(1, n - n % STEREO)


def stem_pair(row: int, opened: int) -> list[int] | None:
    """Row ``row``'s channels on a device opened with ``opened`` (1-based), None: only in the mix."""
    first = STEREO * (row + 1) + 1
    return [first, first + 1] if first + 1 <= opened else None


def layout_line(device: str, opened: int, names: Sequence[str]) -> str:
    """The start-up line: which stem is on which channels, and which are only in the mix."""
    if opened == 1:
        return f"{device} is opened mono: it plays the stems' mix"
    pairs = ["mix 1-2"] + [f"{name} {p[0]}-{p[1]}" for row, name in enumerate(names)
                                if (p := stem_pair(row, opened)) is not None]
    only_mix = [name for row, name in enumerate(names) if stem_pair(row, opened) is None]
    used = STEREO * len(pairs)
    text = f"{device}, {opened} channels: " + ", ".join(pairs)
    if used < opened:
        text += f"; {used + 1}-{opened} silent"
    if only_mix:
        text += f"; only in the mix: {', '.join(only_mix)}"
        if opened == STEREO:
            text += " (--stem-channels N opens N channels; --audio-out jack gives each stem its own ports)"
    return text
