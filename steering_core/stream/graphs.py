"""CUDA graphs for the static step, that check themselves before they are trusted.

``StepGraph`` captures a step function once (through a ``GraphRunner``) and replays it.
Before trusting the capture it runs N steps replayed and N eager from the same state:
the same tokens, or eager for good with one log line. Every change to the stream (knobs,
prompt, settings, position, rollback) is a write into the captured buffers, so one
capture serves until the buffers themselves change (a longer prompt, a new concept).
The comparison and the fallback are tested on the CPU with fake runners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol

import torch

from steering_core.errors import UserError

log = logging.getLogger(__name__)

CudaGraphsMode = Literal["auto", "on", "off"]
CUDA_GRAPHS_MODES: tuple[str, ...] = ("auto", "on", "off")
GraphState = Literal["pending", "graph", "eager"]


class GraphRunner(Protocol):
    """Captures a step function once and replays it."""

    def capture(self, step: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraphRunner:
    """``torch.cuda.CUDAGraph`` around the step."""

    def __init__(self, device: torch.device, warmup_steps: int = 3) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, step: Callable[[], None]) -> None:
        # Warm-up on a side stream, as torch.cuda.graphs recommends; the caller restores
        # the state the warm-up steps moved on.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()


class StepGraph:
    """``cuda_graphs="auto"|"on"|"off"`` for one stream: the state machine and the check."""

    def __init__(self, mode: CudaGraphsMode, device: torch.device, check_steps: int,
                 runner_factory: Callable[[], GraphRunner] | None) -> None:
        if mode not in CUDA_GRAPHS_MODES:
            raise UserError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS_MODES)}, got {mode!r}")
        if runner_factory is None and device.type == "cuda":
            runner_factory = partial(CudaGraphRunner, device)
        if mode == "on" and runner_factory is None:
            raise UserError("--cuda-graphs on needs a CUDA device")
        self.check_steps = check_steps
        self._factory = runner_factory if mode != "off" else None
        self._runner: GraphRunner | None = None
        #: "pending" (not tried yet), "graph" (checked, replaying), "eager" (off or fell back)
        self.state: GraphState = "pending" if self._factory is not None else "eager"
        self.fallback_reason: str | None = None
        self.replays = 0

    def invalidate(self, why: str) -> None:
        if self.state == "graph":
            log.info("static step: re-capturing the CUDA graph (%s)", why)
            self._runner = None
            self.state = "pending"

    def replay(self) -> None:
        assert self._runner is not None
        self._runner.replay()
        self.replays += 1

    def try_capture(self, step: Callable[[], None], save_state: Callable[[], Callable[[], None]],
                    next_noise: Callable[[], None] | None, tokens: Callable[[int], torch.Tensor]) -> None:
        """Capture ``step``, then N steps replayed and N eager from the same state: the same
        tokens (``tokens(n)`` reads what the last N steps wrote), or eager for good with one
        log line. ``save_state`` snapshots what a step moves on and returns the function that
        puts it back; ``next_noise`` (None when greedy) draws the following step's noise, as
        the host loop would. The state is restored afterwards, this step's noise included."""
        assert self._factory is not None
        n = self.check_steps
        restore = save_state()

        def run(one_step: Callable[[], None]) -> torch.Tensor:
            for i in range(n):
                if i > 0 and next_noise is not None:
                    next_noise()
                one_step()
            return tokens(n)

        try:
            runner = self._factory()
            runner.capture(step)
            restore()
            replayed = run(runner.replay)
            restore()
            eager = run(step)
            restore()
        except Exception as exc:  # any failure to capture means eager
            restore()
            self._fall_back(f"capture failed ({type(exc).__name__}: {exc})")
            return
        if torch.equal(replayed, eager):
            self._runner = runner
            self.state = "graph"
            log.info("static step: CUDA graph checked (%d steps identical to eager); replaying", n)
        else:
            diff = int((replayed != eager).sum().item())
            self._fall_back(f"{diff} of {eager.numel()} tokens differ from eager over {n} steps")

    def _fall_back(self, why: str) -> None:
        self._runner = None
        self.state = "eager"
        self.fallback_reason = why
        log.warning("static step: CUDA graphs off, running eager: %s", why)
