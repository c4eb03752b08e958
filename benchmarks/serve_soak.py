"""Soak test for ``steerbridge serve``: random knob traffic, then latency and underruns.

Starts ``steerbridge serve`` as a real process (clock output unless --audio-out is
given), sends random ``/steer/<concept>/knob`` messages over UDP at --rate per second
for --seconds, then reads ``/status/json`` and prints one JSON object:
control-to-audio latency p50/p95 (arrival -> first sample under the new value leaving
the output), underruns, rtf, frames and errors.

    python benchmarks/serve_soak.py --seconds 300 --rate 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


def encode(address: str, *args: object) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def status(sock: socket.socket, server: tuple[str, int], timeout: float = 5.0) -> dict | None:
    sock.sendto(encode("/status"), server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return None
        msg = OscMessage(data)
        if msg.address == "/status/json":
            return json.loads(msg.params[0])
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--rate", type=float, default=50.0, help="knob messages per second")
    p.add_argument("--audio-out", default="none")
    p.add_argument("--port", type=int, default=9321)
    p.add_argument("--extra", default="", help="more serve options, space-separated")
    args = p.parse_args()

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bridge.cli", "serve", "--model", args.model, "--audio-out", args.audio_out,
           "--osc-port", str(args.port), "--quiet", *args.extra.split()]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = ("127.0.0.1", args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        first = None
        for _ in range(480):
            first = status(sock, server, 0.5)
            if first and first.get("frames_generated", 0) > 0:  # {"state": "loading"} while the model loads
                break
            time.sleep(0.25)  # the loading reply is instant: a tight loop would trip the /status rate limit
        if not first:
            print(proc.stderr.read() if proc.poll() is not None else "no /status", file=sys.stderr)
            return 1
        concepts = sorted(first["targets"])
        rng = random.Random(0)
        period = 1.0 / args.rate
        sent = 0
        start = time.monotonic()
        due = start
        while time.monotonic() - start < args.seconds:
            name = rng.choice(concepts)
            sock.sendto(encode(f"/steer/{name}/knob", rng.random()), server)
            sent += 1
            due += period
            time.sleep(max(0.0, due - time.monotonic()))
        time.sleep(1.0)  # let the last events reach the output
        final = status(sock, server) or {}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sock.close()
    result = {
        "model": args.model, "seconds": args.seconds, "rate": args.rate, "messages_sent": sent,
        "audio_out": final.get("audio_out"), "control_latency_ms": final.get("control_latency_ms"),
        "underruns": final.get("underruns"), "rtf": final.get("rtf"), "frames_generated": final.get("frames_generated"),
        "errors": final.get("errors"), "buffer_ms": final.get("buffer_ms"),
        "deferred_rollbacks": final.get("deferred_rollbacks"), "reprimes": final.get("reprimes"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
