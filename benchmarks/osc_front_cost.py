"""What one packet costs the OSC front (issue 21): ``Front.packet`` driven by hand.

The front's logic runs in this process on real sockets (a UDP socket it would read and
the local link to the server, drained as it fills), fed packets directly, so the figure
is the front's own work per packet with no kernel queue and no other process in it:

- ``rotate``: valid knob messages from 2,048 source ports of one host (past the host's
  budget almost all are refused: the cost of a refusal under a flood);
- ``bundles``: bundles of four knob messages to an address pattern from one sender;
- ``fuzz``: ``osc_fuzz.py``'s pool of malformed packets from one sender.

Prints microseconds per packet for each; ``--profile`` adds cProfile's top entries.

    python benchmarks/osc_front_cost.py --packets 60000
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import pstats
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osc_fuzz import bundle, encode, malformed_pool, ntp

from bridge.live.oscfront import Front
from bridge.live.targets import ControlTable


def run(kind: str, packets: int) -> float:
    """Seconds per packet for ``packets`` packets of ``kind`` through a fresh front."""
    link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    front = Front(udp, theirs)
    front.table = ControlTable([("timbre", (-3.0, 3.0)), ("tempo", (-3.0, 3.0))], 128)
    rng = random.Random(0)
    if kind == "rotate":
        pool = [encode("/steer/timbre/knob", rng.random()) for _ in range(1000)]
        senders = [("127.0.0.1", 10000 + i) for i in range(2048)]
    elif kind == "bundles":
        pool = [bundle(ntp(0), *[encode("/st?er/tim*/knob", rng.random())] * 4) for _ in range(1000)]
        senders = [("127.0.0.1", 10000)]
    else:
        pool = malformed_pool(rng)
        senders = [("127.0.0.1", 10000)]
    try:
        start = time.perf_counter()
        for i in range(packets):
            front.packet(pool[i % len(pool)], senders[i % len(senders)], time.monotonic())
            if i % 200 == 0:
                with contextlib.suppress(BlockingIOError):  # drained: the link is empty
                    while True:
                        link.recv(1 << 17)
                front.fire_due()
        return (time.perf_counter() - start) / packets
    finally:
        for s in (link, theirs, udp):
            s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packets", type=int, default=60000)
    p.add_argument("--profile", action="store_true", help="also print cProfile's top entries")
    args = p.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the refusals' log lines are not what is measured
    for kind in ("rotate", "bundles", "fuzz"):
        print(f"{kind}: {run(kind, args.packets) * 1e6:.1f} µs per packet")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run, kind, args.packets)
            pstats.Stats(profile).sort_stats("tottime").print_stats(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
