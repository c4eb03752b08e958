"""A strict OSC 1.0 decoder for incoming datagrams.

python-osc's parser trusts its input: a bundle element with a negative size loops for
ever, a truncated message is read as zeros, and unknown type tags are logged on the root
logger. Every packet the live server receives goes through this decoder instead. It
reads each field against what remains of the datagram, so it does a bounded amount of
work per byte, never more, and raises ``OscWireError`` (one sentence, no traceback) on:

- an address that is not printable ASCII starting with '/', or longer than
  ``MAX_ADDRESS_CHARS``;
- more than ``MAX_ARGS`` arguments, or a type tag outside ``i f d h s S b T F N I``;
- any field that runs past the end, any byte left over after the last field (every
  message is validated to its exact length), a string that is not UTF-8;
- a bundle element whose size is not a positive multiple of 4 within what remains,
  bundles nested deeper than ``MAX_BUNDLE_DEPTH``, or more than ``MAX_MESSAGES`` messages.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
import struct
from dataclasses import dataclass
from typing import Any

from steering_core.errors import UserError

MAX_ADDRESS_CHARS = 256
MAX_ARGS = 16
MAX_BUNDLE_DEPTH = 4
MAX_MESSAGES = 64
MAX_BLOB_BYTES = 4096

BUNDLE_TAG = b"#bundle\x00"
NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
IMMEDIATELY = 1  # the OSC timetag that means "now"

OscArg = int | float | str | bytes | bool | None


class OscWireError(UserError):
    """A datagram that is not a well-formed OSC packet within the server's limits.

    A ``UserError`` like every bad-input error (``steering_core.errors`` imports
    nothing, so the OSC front process, which must start without torch, can use it)."""


@dataclass(frozen=True)
class WireMessage:
    """One decoded message; ``timetag`` is Unix seconds, or ``None`` for "immediately"."""

    address: str
    args: tuple[OscArg, ...]
    timetag: float | None = None
    size: int = 0  # bytes on the wire, for the future queue's accounting


def decode_packet(data: bytes) -> list[WireMessage]:
    """A datagram -> its messages, in order. Raises ``OscWireError``."""
    if not data:
        raise OscWireError("empty datagram")
    out: list[WireMessage] = []
    if data.startswith(BUNDLE_TAG):
        _bundle(memoryview(data), None, 1, out)
    elif data[:1] == b"/":
        out.append(_message(memoryview(data), None))
    else:
        raise OscWireError(f"not an OSC message or bundle ({len(data)} bytes starting {bytes(data[:8])!r})")
    return out


def _bundle(data: memoryview, outer: float | None, depth: int, out: list[WireMessage]) -> None:
    if depth > MAX_BUNDLE_DEPTH:
        raise OscWireError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
    if len(data) < 16:
        raise OscWireError(f"bundle header truncated ({len(data)} bytes, need 16)")
    seconds, fraction = struct.unpack_from(">II", data, 8)
    timetag = outer if (seconds, fraction) == (0, IMMEDIATELY) else seconds - NTP_UNIX_OFFSET + fraction / 2**32
    offset = 16
    while offset < len(data):
        if len(data) - offset < 4:
            raise OscWireError(f"bundle element size truncated at byte {offset}")
        (size,) = struct.unpack_from(">i", data, offset)
        offset += 4
        remaining = len(data) - offset
        if size <= 0 or size % 4 or size > remaining:
            raise OscWireError(f"bundle element size {size} is invalid ({remaining} bytes remain; "
                               "sizes are positive multiples of 4)")
        element = data[offset:offset + size]
        offset += size
        if bytes(element[:8]) == BUNDLE_TAG:
            _bundle(element, timetag, depth + 1, out)
        elif bytes(element[:1]) == b"/":
            out.append(_message(element, timetag))
        else:
            raise OscWireError(f"bundle element at byte {offset - size} is neither a message nor a bundle")
        if len(out) > MAX_MESSAGES:
            raise OscWireError(f"more than {MAX_MESSAGES} messages in one packet")


def _string(data: memoryview, offset: int, what: str, limit: int) -> tuple[bytes, int]:
    """A NUL-terminated string padded to 4 bytes, searched for no further than ``limit``."""
    end = bytes(data[offset:offset + limit + 1]).find(b"\x00")
    if end < 0:
        if len(data) - offset > limit:
            raise OscWireError(f"{what} is longer than {limit} bytes")
        raise OscWireError(f"{what} is not NUL-terminated")
    raw = bytes(data[offset:offset + end])
    padded = (end + 4) & ~3
    if offset + padded > len(data):
        raise OscWireError(f"{what} padding truncated")
    return raw, offset + padded


def _message(data: memoryview, timetag: float | None) -> WireMessage:
    raw_address, offset = _string(data, 0, "address", MAX_ADDRESS_CHARS)
    if not raw_address.isascii() or not raw_address.decode("ascii").isprintable() or b" " in raw_address:
        raise OscWireError("the address must be printable ASCII without spaces")
    address = raw_address.decode("ascii")
    if offset == len(data):  # OSC 1.0 allows an old-style message without type tags
        return WireMessage(address, (), timetag, len(data))
    tags, offset = _string(data, offset, f"type tag string (at most {MAX_ARGS} arguments)", MAX_ARGS + 1)
    if tags[:1] != b",":
        raise OscWireError(f"{_short(address)}: type tag string must start with ','")
    args: list[OscArg] = []
    for tag in tags[1:].decode("ascii", "replace"):
        arg, offset = _arg(data, offset, tag, address)
        args.append(arg)
    if offset != len(data):
        raise OscWireError(f"{_short(address)}: {len(data) - offset} bytes left over after the arguments")
    return WireMessage(address, tuple(args), timetag, len(data))


_FIXED = {"i": (">i", 4), "f": (">f", 4), "d": (">d", 8), "h": (">q", 8)}


def _arg(data: memoryview, offset: int, tag: str, address: str) -> tuple[OscArg, int]:
    if tag in _FIXED:
        fmt, size = _FIXED[tag]
        if offset + size > len(data):
            raise OscWireError(f"{_short(address)}: argument '{tag}' truncated (message is {len(data)} bytes)")
        value = struct.unpack_from(fmt, data, offset)[0]
        return (float(value) if tag in "fd" else int(value)), offset + size
    if tag in "sS":
        raw, offset = _string(data, offset, "string argument", len(data))
        try:
            return raw.decode("utf-8"), offset
        except UnicodeDecodeError:
            raise OscWireError(f"{_short(address)}: string argument is not UTF-8") from None
    if tag == "b":
        if offset + 4 > len(data):
            raise OscWireError(f"{_short(address)}: blob size truncated")
        (size,) = struct.unpack_from(">i", data, offset)
        padded = (size + 3) & ~3
        if size < 0 or size > MAX_BLOB_BYTES or offset + 4 + padded > len(data):
            raise OscWireError(f"{_short(address)}: blob size {size} is invalid")
        return bytes(data[offset + 4:offset + 4 + size]), offset + 4 + padded
    if tag == "T":
        return True, offset
    if tag == "F":
        return False, offset
    if tag == "N":
        return None, offset
    if tag == "I":
        return math.inf, offset
    raise OscWireError(f"{_short(address)}: unsupported OSC type tag {tag!r}")


def _short(text: str, limit: int = 64) -> str:
    """Error text never echoes a long input in full."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def short(text: str, limit: int = 64) -> str:
    return _short(text, limit)


def _padded(raw: bytes) -> bytes:
    return raw + b"\x00" * (4 - len(raw) % 4)


def encode_message(address: str, args: list[Any] | tuple[Any, ...]) -> bytes:
    """An OSC message from str, int (32-bit, else 64-bit), float (32-bit), bool, bytes."""
    tags, body = [","], []
    for arg in args:
        if isinstance(arg, bool):
            tags.append("T" if arg else "F")
        elif isinstance(arg, int):
            small = -2**31 <= arg < 2**31
            tags.append("i" if small else "h")
            body.append(struct.pack(">i" if small else ">q", arg))
        elif isinstance(arg, float):
            tags.append("f")
            body.append(struct.pack(">f", arg))
        elif isinstance(arg, str):
            tags.append("s")
            body.append(_padded(arg.encode("utf-8")))
        elif isinstance(arg, bytes):
            tags.append("b")
            body.append(struct.pack(">i", len(arg)) + arg + b"\x00" * (-len(arg) % 4))
        elif arg is None:
            tags.append("N")
        else:
            raise TypeError(f"cannot encode {type(arg).__name__} as an OSC argument")
    return _padded(address.encode("ascii")) + _padded("".join(tags).encode("ascii")) + b"".join(body)


def is_own_address(dest: tuple[str, int], bound: tuple[str, int]) -> bool:
    """Whether sending to ``dest`` reaches the socket bound to ``bound`` (the server's own
    port): the same address, or, for a socket bound to every address, any address of this
    machine (loopback, ``0.0.0.0``, or one it can bind). Sending there would feed the
    server its own replies. No DNS: ``dest`` is numeric (or ``localhost``)."""
    if dest[1] != bound[1]:
        return False
    try:
        host = ipaddress.ip_address("127.0.0.1" if dest[0] == "localhost" else dest[0])
        own = ipaddress.ip_address(bound[0])
    except ValueError:
        return False
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    if host == own or host.is_unspecified:  # sending to 0.0.0.0 reaches this machine
        return True
    if own.is_unspecified:
        return host.is_loopback or _local(str(host))
    return False


def _local(host: str) -> bool:
    """An address of this machine: one a socket can bind to (a system call, no lookup)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_DGRAM)) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True
