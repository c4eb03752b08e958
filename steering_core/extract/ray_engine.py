"""The labelled-audio engine on Ray: the same windows and the same ``pooled_window`` as
``local_engine``, spread over a cluster. The one module that imports Ray (the ``scale``
extra).

This process hashes every file for its shard key (as the local engine does) and hands
Ray only the files whose shard is not finished, so a second run starts no Ray at all.
Ray Data turns those into rows; its tasks read each file and cut its windows (a bad file
becomes a row that says why); an actor pool, one model per actor (one GPU each on a
cluster with GPUs, CPUs otherwise), pools each window. This process gathers a file's
windows as they stream back and writes its shard the moment the last one lands, so a
run that dies keeps every file it finished.

Every worker loads the model this process loaded (the same spec and dtype) and checks
its fingerprint, so a node with other weights cannot write shards under this key.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from steering_core.errors import UserError
from steering_core.extract.audio_windows import BadAudio, WindowPlan, ray_rows, read_file
from steering_core.extract.labelled_audio import Engine, model_fingerprint, pooled_window
from steering_core.extract.shards import EngineRun, ShardCache, SkippedFile
from steering_core.model.loading import MusicGenHandle
from steering_core.model.names import known_model_names

log = logging.getLogger("steerbridge.ray")

#: Logical CPUs a read-and-cut task asks for: little next to the model's work, so the
#: tasks always find room beside actors that hold whole CPUs.
READ_CPUS = 0.25
#: Windows per actor call: small, so finished files stream back while the run goes on.
WINDOWS_PER_CALL = 8
INSTALL_HINT = "pip install 'steerbridge[scale]' (from a checkout: pip install -e '.[scale]')"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UserError(f"--engine ray needs Ray ({exc}); install it with {INSTALL_HINT}") from None
    return ray


def ray_engine(address: str | None = None, workers: int | None = None, device: str = "auto") -> Engine:
    """An engine on the Ray cluster at ``address`` (``auto``: the one ``ray start`` made on
    this machine; None: a Ray started here, on this machine's cores and GPUs, for this run).
    ``workers``: actors, one model each (default: one per GPU, else one per CPU but one).
    ``device`` ``cpu`` keeps the actors off the GPUs."""
    require_ray()
    if workers is not None and workers < 1:
        raise UserError("--ray-workers must be at least 1")
    return functools.partial(_run, address=address, workers=workers, device=device)


def _run(handle: MusicGenHandle, files: Sequence[Path], plan: WindowPlan, cache: ShardCache, progress: bool, *,
         address: str | None, workers: int | None, device: str) -> EngineRun:
    run = EngineRun()
    todo: list[dict[str, str]] = []
    for path in files:  # the keys here: a run with every shard finished starts no Ray at all
        try:
            key = plan.shard_key(read_file(path))
        except BadAudio as exc:
            run.skipped.append(SkippedFile(str(path), str(exc)))
            continue
        if cache.has(key):
            run.keys[path] = key
            run.from_cache += 1
        else:
            todo.append({"path": str(path), "key": key})
    if not todo:
        return run
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address)
    try:
        size, resources = actor_resources(ray.cluster_resources(), workers, device)
        log.info("ray: %d files to pool on %d worker%s, each %s", len(todo), size, "" if size == 1 else "s", resources)
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts finished files
        rows = ray.data.from_items(todo).flat_map(ray_rows, fn_kwargs={"plan": plan}, num_cpus=READ_CPUS)
        pooled = rows.map_batches(
            _Pooler, fn_constructor_kwargs={"spec": _portable_spec(handle.model_id), "dtype": handle.dtype,
                                            "plan": plan, "threads": max(1, int(resources["num_cpus"]))},
            batch_size=WINDOWS_PER_CALL, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
            **resources)
        with tqdm(total=len(files), initial=len(files) - len(todo), desc="labelled audio (ray)", unit="file",
                  disable=not progress) as bar:
            _gather(pooled.iter_rows(), {str(p): p for p in files}, cache, run, bar)
        return run
    finally:
        if started_here:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> None:
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UserError(f"--engine ray: cannot start or reach {where}: {str(exc).splitlines()[0]}") from None


def actor_resources(cluster: dict[str, float], workers: int | None, device: str) -> tuple[int, dict[str, float]]:
    """(actors, each actor's Ray resources) on a cluster with ``cluster``'s totals."""
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if device.startswith("cuda") and not gpus:
        raise UserError(f"--device {device}, but the Ray cluster has no GPUs (its resources: {cluster})")
    if gpus and device != "cpu":
        if workers is not None and workers > gpus:
            log.warning("ray: --ray-workers %d, but the cluster has %d GPUs; using %d", workers, gpus, gpus)
        return min(workers or gpus, gpus), {"num_gpus": 1.0, "num_cpus": 1.0}
    size = workers or max(1, int(cpus) - 1)
    per_actor = min(1.0, (cpus - READ_CPUS) / size)  # room for the read tasks beside every actor
    if per_actor <= 0:
        raise UserError(f"--ray-workers {size}: the Ray cluster has {cpus:g} CPUs")
    return size, {"num_cpus": per_actor}


def _portable_spec(spec: str) -> str:
    """The model spec as a worker must see it: a folder as an absolute path."""
    if spec not in known_model_names() and Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


class _Pooler:
    """A Ray actor: one model, windows in, pooled activations out (other rows pass through)."""

    def __init__(self, spec: str, dtype: torch.dtype, plan: WindowPlan, threads: int) -> None:
        from steering_core.model.loading import load_model

        gpu = torch.cuda.is_available()  # Ray shows an actor only the GPU it was given
        if not gpu:
            torch.set_num_threads(threads)
        self.handle = load_model(spec, "cuda" if gpu else "cpu", dtype)
        self.plan = plan
        if model_fingerprint(self.handle) != plan.model_fingerprint:
            raise UserError(f"a Ray worker loaded {spec!r} with other weights than the driver; install the same "
                            "steerbridge and model files on every node")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = self.handle
        pooled = np.zeros((len(batch["kind"]), h.num_layers, h.d_model), np.float32)
        for i, kind in enumerate(batch["kind"]):
            if kind == "window":  # a copy: Ray hands the batch over read-only
                pooled[i] = pooled_window(h, np.array(batch["audio"][i], np.float32), self.plan).numpy()
        out = {name: batch[name] for name in ("path", "key", "kind", "reason", "index", "count")}
        out["pooled"] = pooled
        return out


def _gather(rows: Iterator[dict[str, Any]], by_name: dict[str, Path], cache: ShardCache, run: EngineRun,
            bar: tqdm) -> None:
    """Rows as they stream back -> shards, each written when its file's last window lands."""
    partial: dict[str, dict[int, np.ndarray]] = {}
    for row in rows:
        name, key = str(row["path"]), str(row["key"])
        if row["kind"] == "bad":
            run.skipped.append(SkippedFile(name, str(row["reason"])))
        else:
            got = partial.setdefault(name, {})
            got[int(row["index"])] = np.asarray(row["pooled"], np.float32)
            if len(got) < int(row["count"]):
                continue
            cache.save(key, torch.from_numpy(np.stack([got[i] for i in range(len(got))])))
            del partial[name]
            run.keys[by_name[name]] = key
            run.computed += 1
        bar.update()
