"""Process-wide settings changed for a block and put back after it.

Library code must leave the process as it found it: the torch thread count and the
global RNG belong to whoever runs the process (``steerbridge serve`` sets the thread
count for the whole set; a test run sets its own). A function that needs one of them
for its own work takes it for the length of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the caller's count again after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """The global RNG seeded with ``seed`` inside the block, as ``torch.manual_seed`` would
    (so the same draws), and the caller's RNG state again after it. The CPU generator is
    seeded, and a CUDA ``device``'s generator too; no other (``torch.manual_seed`` would
    reseed every GPU, and forking them all would initialise CUDA for a CPU-only caller)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    index = (dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else None
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.random.default_generator.manual_seed(seed)
        if index is not None:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
