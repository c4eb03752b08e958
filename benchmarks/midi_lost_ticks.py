"""How the MIDI clock's tempo estimator fares when one tick of four beats never arrives,
on synthetic stamps: exact arrival times, or rounded up to a JACK cycle (as rtmidi's JACK
back end stamps them: once a cycle). Prints, per cycle length and tempo, how often the
lost tick was found and the worst tempo error after the four beats.

    PYTHONPATH=$PWD python benchmarks/midi_lost_ticks.py [--seeds 100]
"""

from __future__ import annotations

import argparse
import math
import random

from tqdm import tqdm

from bridge.clock.tick_tempo import TICKS_PER_QUARTER, TickTempo


def stamps(bpm: float, count: int, rng: random.Random, grain: float) -> list[float]:
    period = 60.0 / bpm / TICKS_PER_QUARTER
    times = [100.0 + i * period + rng.uniform(-0.001, 0.001) for i in range(count)]
    return [math.ceil(t / grain) * grain for t in times] if grain else times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    cases = [(frames, bpm) for frames in (0, 256, 1024) for bpm in (90.0, 128.0, 174.0)]
    for frames, bpm in tqdm(cases, desc="cases", leave=False):
        worst, found = 0.0, 0
        for seed in range(args.seeds):
            rng = random.Random(seed)
            times = stamps(bpm, 4 * TICKS_PER_QUARTER, rng, frames / 48000)
            lost = rng.randrange(20, 90)
            tempo = TickTempo()
            for i, t in enumerate(times):
                if i != lost:
                    tempo.add(t)
            assert tempo.bpm is not None
            worst = max(worst, abs(tempo.bpm / bpm - 1))
            found += tempo.lost == 1
        cycle = f"{frames}-frame cycle" if frames else "exact"
        print(f"{cycle:>16} {bpm:5.0f} BPM: lost tick found {found}/{args.seeds}, worst error {worst * 100:.2f} %")


if __name__ == "__main__":
    main()
