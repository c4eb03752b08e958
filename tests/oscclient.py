"""A tiny OSC client for tests: a real UDP socket on loopback."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


def message(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def bundle(timetag: float, *messages: bytes) -> bytes:
    b = OscBundleBuilder(timetag)
    for m in messages:
        b.add_content(OscMessage(m))
    return b.build().dgram


class Client:
    def __init__(self, port: int, listen_port: int = 0) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", listen_port))
        self.port = self.sock.getsockname()[1]

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(message(address, *args), self.server)

    def raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float = 2.0) -> OscMessage | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65536)
        except TimeoutError:
            return None
        return OscMessage(data)

    def drain(self, timeout: float = 0.2) -> list[OscMessage]:
        out = []
        while (m := self.recv(timeout)) is not None:
            out.append(m)
        return out

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        self.send("/status")
        while time.monotonic() < deadline:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m is not None and m.address == "/status/json":
                return json.loads(m.params[0])
        raise TimeoutError("no /status/json reply")

    def close(self) -> None:
        self.sock.close()
