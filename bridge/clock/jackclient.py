"""What the JACK sources and the JACK output share: opening a client with one clear line
when there is no server, JACK's time on ``time.monotonic``'s, and port latencies.

Imported only when JACK is asked for (``--sync jack``, ``--audio-out jack``): it loads
JACK-Client, and libjack through ctypes for the two calls JACK-Client does not wrap
(``jack_get_time``, ``jack_get_cycle_times``, ``jack_frames_since_cycle_start`` and
``jack_port_get_latency_range``); both libraries are the same
loaded ``libjack``, so JACK-Client's client and port pointers are valid in either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import jack

from steering_core.errors import UserError

log = logging.getLogger("steerbridge.jack")

#: jack_latency_callback_mode_t: the latency from a port to the speakers.
_PLAYBACK_LATENCY = 1


class _LatencyRange(ctypes.Structure):
    _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


def _libjack() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
    lib.jack_get_time.restype = ctypes.c_uint64
    lib.jack_get_time.argtypes = []
    lib.jack_port_get_latency_range.restype = None
    lib.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_LatencyRange)]
    lib.jack_get_cycle_times.restype = ctypes.c_int
    lib.jack_get_cycle_times.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                         ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                                         ctypes.POINTER(ctypes.c_float)]
    lib.jack_frames_since_cycle_start.restype = ctypes.c_uint32
    lib.jack_frames_since_cycle_start.argtypes = [ctypes.c_void_p]
    lib.jack_port_by_name.restype = ctypes.c_void_p
    lib.jack_port_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_LIB = _libjack()


def _quiet(message: str) -> None:
    # libjack prints every failed connection attempt; a reconnect loop would flood the
    # performer's terminal, so its messages go to the debug log and ours say what matters.
    log.debug("libjack: %s", message)


jack.set_error_function(_quiet)
jack.set_info_function(_quiet)


def server_label() -> str:
    name = os.environ.get("JACK_DEFAULT_SERVER")
    return f"JACK server {name!r}" if name else "JACK server"


def open_client(name: str) -> jack.Client:
    """A client of the running JACK server (never one started for us), or one line saying
    there is none. The caller activates it."""
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError:
        raise UserError(f"no {server_label()} is running (start jackd, or run under PipeWire's JACK layer "
                        "with pw-jack)") from None


def _address(cdata: Any) -> int:
    return int(jack._ffi.cast("uintptr_t", cdata))


def monotonic_offset() -> float | None:
    """``time.monotonic() - JACK time`` in seconds, now, or None if this thread was held up
    while reading the two. JACK's microsecond clock need not be ``time.monotonic``'s
    (jackd picks its own), so they are read back to back, the tightest of a few tries."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        before = time.monotonic()
        jack_us = _LIB.jack_get_time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2 - jack_us / 1e6)
    assert best is not None
    return best[1] if best[0] < 200e-6 else None


def cycle_start_usecs(client: jack.Client, woke_usecs: int) -> int | None:
    """When the JACK cycle that woke at ``woke_usecs`` (a transport position's ``usecs``)
    started, on JACK's filtered clock (its delay-locked loop: the time every JACK client
    stamps a period with, free of the wake-up's jitter). None if JACK is already on the
    next cycle (read again)."""
    pointer = _address(client._ptr)
    frames, current, following, period = ctypes.c_uint32(), ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_float()
    if _LIB.jack_get_cycle_times(pointer, ctypes.byref(frames), ctypes.byref(current), ctypes.byref(following),
                                 ctypes.byref(period)) != 0:
        return None
    since = _LIB.jack_frames_since_cycle_start(pointer)
    woke = _LIB.jack_get_time() - since * 1e6 / client.samplerate
    # The timer's cycle is the position's when its raw wake-up is the position's (within a frame).
    if abs(woke - woke_usecs) > 2e6 / client.samplerate + 50:
        return None
    return int(current.value)


def port_playback_latency(client: jack.Client, port_name: str) -> int:
    """Frames from a port to the speakers, as JACK reports them (its latency range's max)."""
    port = _LIB.jack_port_by_name(_address(client._ptr), port_name.encode())
    if not port:
        return 0
    found = _LatencyRange()
    _LIB.jack_port_get_latency_range(port, _PLAYBACK_LATENCY, ctypes.byref(found))
    return int(found.max)


def downstream_latency(client: jack.Client, ports: Iterable[str]) -> int:
    """The longest playback latency of ``ports`` and of the ports they feed: what a sample
    written to them waits after its period before it is heard."""
    worst = 0
    for name in ports:
        worst = max(worst, port_playback_latency(client, name))
        for target in client.get_all_connections(name):
            worst = max(worst, port_playback_latency(client, target.name))
    return worst


def speakers_latency(client: jack.Client) -> int:
    """The longest playback latency of the machine's playback ports (the DAW's audio
    reaches the listener through them)."""
    ports = [p.name for p in client.get_ports(is_audio=True, is_input=True, is_physical=True)]
    return max((port_playback_latency(client, name) for name in ports), default=0)


class Backoff:
    """Waits between reconnection attempts: doubling from ``first`` to ``most`` seconds,
    never more often, so a server that stays away costs almost nothing and one that
    comes back is found within ``most`` seconds, however long it was gone."""

    def __init__(self, first: float = 0.25, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.most, self.first * 2 ** min(self.attempts, 16))
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
