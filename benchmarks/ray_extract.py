"""Labelled-audio pooling speed: the local engine against Ray with 1 and 2 workers, and
what Ray costs to start.

On the toy's bright/dark world (written to --world if it is not there), with a fresh
activation cache per run. Prints one JSON object per measurement: ``ray_start_s`` (a
local ``ray.init`` on --cpus CPUs), then per engine the windows, the wall time from the
call to the last shard, windows per second over that, and for Ray the seconds to the
first shard (actors starting and loading the model) and the windows per second after it.

    python benchmarks/ray_extract.py --world /tmp/world --repeat 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from steering_core.extract.labelled_audio import Engine, WindowPlan, collect_labelled, local_engine
from steering_core.extract.shards import EngineRun, ShardCache
from steering_core.model.loading import MusicGenHandle, load_model
from steering_core.toy.captions import write_labelled_folders


class TimedCache(ShardCache):
    """Records when each shard lands."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self.saved_at: list[float] = []

    def save(self, key: str, activations: torch.Tensor) -> None:
        super().save(key, activations)
        self.saved_at.append(time.monotonic())


def measure(handle: MusicGenHandle, world: Path, name: str, engine: Engine) -> dict[str, object]:
    timed: list[TimedCache] = []

    def run(h: MusicGenHandle, files: Sequence[Path], plan: WindowPlan, cache: ShardCache, progress: bool) -> EngineRun:
        timed.append(TimedCache(cache.folder))
        return engine(h, files, plan, timed[0], progress)

    cache = Path(tempfile.mkdtemp(prefix="ray-extract-"))
    try:
        started = time.monotonic()
        data = collect_labelled(handle, world, window_s=1.0, cache=cache, progress=False, engine=run)
        wall = time.monotonic() - started
    finally:
        shutil.rmtree(cache)
    saved = timed[0].saved_at
    out: dict[str, object] = {"engine": name, "windows": len(data.activations), "wall_s": round(wall, 1),
                              "windows_per_s": round(len(data.activations) / wall, 1),
                              "load_1min": round(os.getloadavg()[0], 1)}
    if name != "local" and len(saved) > 1:
        first = saved[0] - started
        out["first_shard_s"] = round(first, 1)
        out["windows_per_s_after_first"] = round((len(data.activations) - 1) / (saved[-1] - saved[0]), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="labelled folder (written if missing)")
    parser.add_argument("--per-class", type=int, default=200, help="one-second clips per class")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not args.world.is_dir():
        write_labelled_folders(args.world, "timbre", per_class=args.per_class, seconds=1.0, seed=0)
    handle = load_model("toy", device="cpu")
    for _ in range(args.repeat):
        print(json.dumps(measure(handle, args.world, "local", local_engine)), flush=True)
    import ray

    from steering_core.extract.ray_engine import ray_engine

    for _ in range(args.repeat):
        started = time.monotonic()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        print(json.dumps({"ray_start_s": round(time.monotonic() - started, 1), "cpus": args.cpus,
                          "load_1min": round(os.getloadavg()[0], 1)}), flush=True)
        for workers in (1, 2):
            print(json.dumps(measure(handle, args.world, f"ray-{workers}", ray_engine(workers=workers, device="cpu"))),
                  flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
