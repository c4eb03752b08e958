"""Hostile OSC load against ``steerbridge serve`` (issues 11 and 21), on loopback only.

Starts ``steerbridge serve --model <model> --audio-out none`` as a real process, sets a
knob, then runs two windows of the same length on the same server:

1. idle: only a ``/status`` probe every --probe-ms;
2. attack: the same probe, plus one of (--attack):
   - ``fuzz``: malformed packets at --rate per second from another socket (wildcard
     storms, negative and oversized bundle elements, truncated messages, deep nesting,
     unknown type tags, non-UTF-8, long unknown addresses, bundles of ``/status``,
     far-future and near-future bundles, subscriptions for other hosts, random bytes,
     60 KB datagrams);
   - ``flood``: valid ``/steer/timbre/knob f`` from --senders sockets, --rate per second
     each;
   - ``rotate``: valid knob messages at --rate per second in all, from one sender
     rotating over --ports source ports.

Prints one JSON object: underruns in each window, the /status round-trip times
(max, p95, p99, and how many probes went unanswered within --status-deadline-ms), the
server's RSS before and after the attack, and (fuzz) whether the knob kept its value.

    python benchmarks/osc_fuzz.py --seconds 60 --rate 5000
    python benchmarks/osc_fuzz.py --model toy --attack flood --senders 24 --rate 500 --seconds 15
    python benchmarks/osc_fuzz.py --model toy --attack rotate --ports 2048 --rate 12000 --seconds 15
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

HOST = "127.0.0.1"  # loopback only, always


def encode(address: str, *args: object) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def ntp(t: float) -> bytes:
    seconds = t + 2208988800
    return struct.pack(">II", int(seconds), int((seconds % 1) * 2**32))


def bundle(timetag: bytes, *elements: bytes) -> bytes:
    return b"#bundle\x00" + timetag + b"".join(struct.pack(">i", len(e)) + e for e in elements)


def malformed_pool(rng: random.Random, n: int = 4000) -> list[bytes]:
    """Packets that must all be refused (none of them may change the server's state)."""
    knob = encode("/steer/timbre/knob", 0.75)
    makers = [
        lambda: encode("/" + "*" * rng.randint(30, 64), 1.0),
        lambda: encode("/steer/" + "?*" * rng.randint(10, 100) + "x", 1.0),
        lambda: b"#bundle\x00" + ntp(0) + struct.pack(">i", -rng.randint(1, 2**31 - 1)),
        lambda: b"#bundle\x00" + ntp(0) + struct.pack(">i", rng.randint(100, 2**31 - 1)) + b"\x00" * 8,
        lambda: knob[:-rng.choice((1, 2, 3, 4))],
        lambda: knob + b"\x00" * 4,
        lambda: _nested(rng.randint(5, 40)),
        lambda: b"/x\x00\x00," + bytes([rng.choice(b"cmrtuvwxyz")]) + b"\x00\x00" + b"\x00" * 4,
        lambda: encode("/prompt", "x")[:-4] + bytes(rng.choice((0x80, 0xff, 0xfe)) for _ in range(3)) + b"\x00",
        lambda: encode("/" + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(200, 255))), 1.0),
        lambda: encode("/" + "u" * 2000),
        lambda: bundle(ntp(0), *[encode("/status")] * rng.randint(2, 60)),
        lambda: bundle(ntp(time.time() + 3600), encode("/steer/timbre", 1.0)),
        # Near-future, but out of range when it fires: refused then, and it tests the queue bound.
        lambda: bundle(ntp(time.time() + rng.uniform(1, 8)), *[encode("/steer/timbre", 1e9)] * 32),
        lambda: encode("/subscribe", "192.0.2.1", rng.randint(1, 65535)),
        lambda: encode("/subscribe", "example.invalid", 9000),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))),
        lambda: b"/" + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))),
        lambda: bytes(60_000),
        lambda: encode("/steer/timbre", float("nan")),
        lambda: encode("/steer/timbre/knob", *[0.5] * 40),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def _nested(depth: int) -> bytes:
    inner = encode("/status")
    for _ in range(depth):
        inner = bundle(ntp(0), inner)
    return inner


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


class Prober:
    """``/status`` every ``period`` seconds from its own socket; records round-trip times."""

    def __init__(self, server: tuple[str, int], period: float = 0.1) -> None:
        self.server, self.period = server, period
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.rtts_ms: list[float | None] = []

    def status(self, timeout: float = 2.0) -> dict | None:
        self.sock.sendto(encode("/status"), self.server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return None
            msg = OscMessage(data)
            if msg.address == "/status/json":
                return json.loads(msg.params[0])
        return None

    def run(self, seconds: float) -> dict | None:
        self.rtts_ms = []
        end = time.monotonic() + seconds
        last = None
        while time.monotonic() < end:
            t = time.monotonic()
            got = self.status(timeout=1.0)
            self.rtts_ms.append(None if got is None else (time.monotonic() - t) * 1000)
            last = got or last
            time.sleep(max(0.0, self.period - (time.monotonic() - t)))
        return last

    def summary(self, deadline_ms: float) -> dict:
        answered = sorted(r for r in self.rtts_ms if r is not None)
        late = sum(1 for r in self.rtts_ms if r is None or r > deadline_ms)
        def pct(q: float) -> float | None:
            return round(answered[min(len(answered) - 1, int(q * len(answered)))], 1) if answered else None

        return {"probes": len(self.rtts_ms), "unanswered": len(self.rtts_ms) - len(answered),
                f"over_{deadline_ms:.0f}ms": late, "max_ms": round(answered[-1], 1) if answered else None,
                "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def open_sockets(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # replies to the attackers are not read
        sock.bind((HOST, 0))
        out.append(sock)
    return out


def knob_pool(rng: random.Random, n: int = 4000) -> list[bytes]:
    """Valid knob moves: what a flood of faders sends."""
    return [encode("/steer/timbre/knob", rng.random()) for _ in range(n)]


def fuzz(server: tuple[str, int], pool: list[bytes], rate: float, seconds: float, sent: list[int],
         sockets: int = 1) -> None:
    """``rate`` packets a second in all from ``pool``, each from the next of ``sockets`` sockets in turn."""
    socks = open_sockets(sockets)
    batch = max(1, int(rate / 200))  # send in 5 ms batches
    period = batch / rate
    start = time.monotonic()
    due = start
    i = 0
    while time.monotonic() - start < seconds:
        for _ in range(batch):
            with contextlib.suppress(OSError):  # loopback buffer full: dropped, as on a network
                socks[i % len(socks)].sendto(pool[i % len(pool)], server)
            i += 1
        due += period
        time.sleep(max(0.0, due - time.monotonic()))
    sent[0] = i
    for sock in socks:
        sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--attack", choices=("fuzz", "flood", "rotate"), default="fuzz")
    p.add_argument("--rate", type=float, default=5000.0,
                   help="packets per second (flood: per sender; fuzz and rotate: in all)")
    p.add_argument("--senders", type=int, default=24, help="flood: sockets, each sending --rate per second")
    p.add_argument("--ports", type=int, default=2048, help="rotate: source ports the one sender rotates over")
    p.add_argument("--model", default="tiny")
    p.add_argument("--probe-ms", type=float, default=100.0)
    p.add_argument("--port", type=int, default=9331)
    p.add_argument("--status-deadline-ms", type=float, default=100.0)
    p.add_argument("--extra", default="", help="more serve options, space-separated")
    args = p.parse_args()

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bridge.cli", "serve", "--model", args.model, "--audio-out", "none",
           "--osc-host", HOST, "--osc-port", str(args.port), "--quiet", *args.extra.split()]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = (HOST, args.port)
    prober = Prober(server, args.probe_ms / 1000)
    rng = random.Random(0)
    pool = malformed_pool(rng) if args.attack == "fuzz" else knob_pool(rng)
    sockets = {"fuzz": 1, "flood": args.senders, "rotate": args.ports}[args.attack]
    rate = args.rate * args.senders if args.attack == "flood" else args.rate
    try:
        first = None
        for _ in range(480):
            first = prober.status(0.5)
            if first and first.get("frames_generated", 0) > 0:
                break
            time.sleep(0.25)
        if not first or proc.poll() is not None:
            print(proc.stderr.read() if proc.poll() is not None else "no /status", file=sys.stderr)
            return 1
        prober.sock.sendto(encode("/steer/timbre/knob", 0.75), server)
        time.sleep(2.0)  # settle
        before_idle = prober.status() or {}
        prober.run(args.seconds)
        idle = prober.summary(args.status_deadline_ms)
        after_idle = prober.status() or {}
        rss_before = rss_kb(proc.pid)
        sent = [0]
        fuzzer = threading.Thread(target=fuzz, args=(server, pool, rate, args.seconds, sent, sockets))
        fuzzer.start()
        prober.run(args.seconds)
        fuzzer.join()
        fuzzed = prober.summary(args.status_deadline_ms)
        time.sleep(1.0)
        after_fuzz = prober.status() or {}
        rss_after = rss_kb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        prober.sock.close()
    result = {
        "attack": args.attack, "model": args.model, "seconds": args.seconds, "rate_total": rate, "sockets": sockets,
        "packets_sent": sent[0],
        "packets_seen_by_server": after_fuzz.get("osc", {}).get("packets", 0) - after_idle.get("osc", {}).get("packets", 0),
        "underruns_idle": after_idle.get("underruns", 0) - before_idle.get("underruns", 0),
        "underruns_fuzz": after_fuzz.get("underruns", 0) - after_idle.get("underruns", 0),
        "status_idle": idle, "status_fuzz": fuzzed,
        "rss_mb_before_fuzz": round(rss_before / 1024, 1), "rss_mb_after_fuzz": round(rss_after / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "state_kept": after_fuzz.get("targets") == before_idle.get("targets") if args.attack == "fuzz" else None,
        "osc": after_fuzz.get("osc"),
        "targets": after_fuzz.get("targets"), "rtf": after_fuzz.get("rtf"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
