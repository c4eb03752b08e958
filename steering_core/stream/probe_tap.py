"""Probe readings, every decode step: each concept's probe on its layer's steered output.

A stream with ``taps`` set calls them with every decoder layer's output after that
layer's steering offset (``layers.prefill_logits`` and ``StaticStream._device_step``):
what the next layer reads, so what a probe reads there includes the push it is
monitoring (SMITIN's self-monitoring). At a layer with probes, the tap takes the mean
over the step's positions of each stream's conditional row (one position on a plain
step, the window on a re-prime; the probes were fitted on means over frames) and writes
``mean · weights + bias`` into a fixed device buffer: one small matrix-vector product per
step, no host sync, no branch on a tensor's value, so a captured CUDA graph replays it.
``read`` copies the probabilities to the host (the one sync), on the engine thread.

A tap only reads: it changes no activation, so no token depends on it (replay needs none).
Set a stream's taps before its first step: a captured graph holds the taps it was traced with.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from steering_core.steer.probe import LinearProbe


class ProbeTaps:
    """The probes of several concepts on one stream of ``batch`` rows (see the module doc)."""

    def __init__(self, probes: Mapping[str, LinearProbe], batch: int, num_layers: int,
                 device: torch.device | str) -> None:
        bad = [f"{name} (layer {p.layer})" for name, p in probes.items() if not 0 <= p.layer < num_layers]
        if bad:
            raise ValueError(f"probes outside the model's {num_layers} layers: {', '.join(bad)}")
        # Ordered by layer, so each layer's probes are one contiguous slice of the buffer.
        self.names = sorted(probes, key=lambda n: (probes[n].layer, n))
        self.batch = batch
        with torch.inference_mode(False):  # plain tensors: written in place in and out of inference mode
            #: Logits [concepts, batch], rewritten by every step's forward.
            self.logits = torch.zeros(len(self.names), batch, dtype=torch.float32, device=device)
            #: The logits summed over the steps since the last ``read_mean``, and how many steps.
            self.sums = torch.zeros_like(self.logits)
            self.count = torch.zeros(1, dtype=torch.float32, device=device)
        self._at: list[tuple[slice, torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self._last = max((p.layer for p in probes.values()), default=-1)  # a step is counted there
        for layer in sorted({p.layer for p in probes.values()}):
            rows = [i for i, n in enumerate(self.names) if probes[n].layer == layer]
            weights = torch.stack([probes[self.names[i]].weights for i in rows]).float().to(device)  # [P, d]
            bias = torch.tensor([probes[self.names[i]].bias for i in rows], dtype=torch.float32, device=device)
            self._at[layer] = (slice(rows[0], rows[-1] + 1), weights, bias[:, None])

    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        """A decoder layer's steered output [2 * batch (conditional rows first), positions, d_model]."""
        at = self._at[layer]
        if at is None:
            return
        rows, weights, bias = at
        mean = hidden[: self.batch].float().mean(dim=1)  # [batch, d]
        logits = weights @ mean.T + bias
        self.logits[rows].copy_(logits)
        self.sums[rows].add_(logits)  # in place: a captured graph replays the accumulation too
        if layer == self._last:
            self.count.add_(1.0)

    def read(self, stream: int = 0) -> dict[str, float]:
        """Each concept's probability on ``stream`` after the last step (a host sync)."""
        values = torch.sigmoid(self.logits[:, stream]).tolist()
        return dict(zip(self.names, values, strict=True))

    def read_mean(self, stream: int = 0) -> dict[str, float] | None:
        """Each concept's probability on ``stream`` from its logit's mean over the steps since the
        last read (what the probe was fitted on: a mean over frames, and a step's reading swings
        with each token), then starts the next mean for every stream; None when no step ran.
        A host sync; engine thread."""
        rows = self.read_means()
        return None if rows is None else rows[stream]

    def read_means(self) -> list[dict[str, float]] | None:
        """``read_mean`` of every stream (row of the batch) at once: one host sync, one new mean."""
        steps = float(self.count.item())
        if steps <= 0:
            return None
        values = torch.sigmoid(self.sums / steps).T.tolist()  # [batch][concepts]
        self.sums.zero_()
        self.count.zero_()
        return [dict(zip(self.names, row, strict=True)) for row in values]


__all__ = ["ProbeTaps"]
