"""Several stems in one batch: ``StemStream``, a ``StaticStream`` whose rows are independent.

A stem is one row of the batch with its own prompt, its own seed and its own knobs (the
steerer's per-stream table, which ``StaticStream`` already reads). One forward pass per
step serves every stem. What makes a row independent of the others:

* **its own RNG.** Each row draws its sampling noise from its own ``torch.Generator``,
  exactly as a one-row stream seeded the same draws it (``[K, V]`` exponentials, the
  race of ``sampling.race``), so a stem's noise never depends on how many stems there
  are or where it sits. ``RowGenerators`` bundles them behind the ``get_state`` /
  ``set_state`` / ``manual_seed`` a stream's rollback and graph check use;
* **its own prompt encoding.** Each prompt is encoded alone (a batch would pad the text
  encoder's input, which moves the floats), then padded with masked zeros to the longest
  one, so a row's cross-attention sees what it would alone, and a stem's new prompt
  re-encodes that row only (``set_row_prompt``).

* **its own sampling settings** (CFG scale, temperature, top-k, top-p: ``row_settings``).
  The sampler's buffers hold one value per row (``SamplingBuffers``); while every row
  agrees a step samples the batch at once, as before, and when they differ it draws row
  by row (``sampling.draw_rows``), so a row samples what it would in a batch of its own
  settings. ``settings`` is row 0's; setting it sets every row's.

Whether a batched row's floats equal a one-row stream's is the backend's
matter (a matrix product over 3 rows need not round as one over 1 does):
``tests/test_stems.py`` measures it, and the same layout always gives the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

import torch
import torch.nn.functional as F

from steering_core.model.loading import MusicGenHandle
from steering_core.stream.decode_loop import StreamOptions
from steering_core.stream.graphs import CudaGraphsMode
from steering_core.stream.sampling import SamplingSettings, draw, draw_rows, guide
from steering_core.stream.static_step import StaticStream


class RowGenerators:
    """One ``torch.Generator`` per row, with the state calls of one generator: a state is
    every row's state, concatenated (each is a fixed-size byte tensor)."""

    def __init__(self, device: torch.device, seeds: Sequence[int]) -> None:
        self.rows = [torch.Generator(device=device) for _ in seeds]
        for g, seed in zip(self.rows, seeds, strict=True):
            g.manual_seed(int(seed))

    def get_state(self) -> torch.Tensor:
        return torch.cat([g.get_state() for g in self.rows])

    def set_state(self, state: torch.Tensor) -> None:
        size = state.numel() // len(self.rows)
        for i, g in enumerate(self.rows):
            g.set_state(state[i * size:(i + 1) * size].clone())

    def manual_seed(self, seed: int) -> None:
        """Every row from ``seed`` (what a plain stream's seed change does)."""
        for g in self.rows:
            g.manual_seed(int(seed))

    def seed_row(self, row: int, seed: int) -> None:
        self.rows[row].manual_seed(int(seed))


class StemStream(StaticStream):
    """A static stream whose rows are stems: per-row prompts, seeds and knobs (see the module doc)."""

    def __init__(self, handle: MusicGenHandle, prompts: Sequence[str], *, seeds: Sequence[int],
                 cuda_graphs: CudaGraphsMode = "off", **options: Unpack[StreamOptions]) -> None:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self._row_states: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._row_prompts: list[str] = []
        self._row_settings: list[SamplingSettings] = []
        super().__init__(handle, list(prompts), cuda_graphs=cuda_graphs, **options)
        self._row_settings = [self._shared_settings] * self.batch
        self.generator = RowGenerators(self.device, seeds)  # type: ignore[assignment]
        self.seeds = [int(s) for s in seeds]

    @property
    def row_generators(self) -> RowGenerators:
        generator: Any = self.generator
        assert isinstance(generator, RowGenerators)
        return generator

    # --- sampling settings: each row its own -------------------------------------------
    @property
    def settings(self) -> SamplingSettings:
        """Row 0's settings (every row's while no stem has its own)."""
        return self._row_settings[0] if self._row_settings else self._shared_settings

    @settings.setter
    def settings(self, settings: SamplingSettings) -> None:
        """The same settings for every row."""
        self._shared_settings = settings
        self._row_settings = [settings] * len(self._row_settings)

    @property
    def row_settings(self) -> list[SamplingSettings]:
        """Each row's settings (a copy of the list)."""
        return list(self._row_settings) if self._row_settings else [self._shared_settings] * self.batch

    def set_row_settings(self, row: int, settings: SamplingSettings) -> None:
        """Row ``row``'s own settings from the next frame on; the other rows keep theirs."""
        settings.validate()
        rows = self.row_settings
        rows[row] = settings
        self._row_settings = rows

    def _rows_agree(self) -> bool:
        rows = self.row_settings
        return all(s == rows[0] for s in rows)

    def _draws_noise(self) -> bool:
        return any(s.temperature != 0.0 for s in self.row_settings)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self._span is None or self._rows_agree():  # a graph's form is per row already
            return super()._sample(logits)
        return draw_rows(logits, self.row_settings, self.sampling.noise, self.sampling)

    # --- prompts: each encoded alone ---------------------------------------------------
    def _encode(self, prompts: list[str]) -> None:
        if len(self._row_states) != len(prompts):
            self._row_states = [self.handle.encode_text([p]) for p in prompts]
        else:  # only the rows whose text changed
            self._row_states = [state if p == old else self.handle.encode_text([p])
                                for p, old, state in zip(prompts, self._row_prompts, self._row_states, strict=True)]
        self._row_prompts = list(prompts)
        length = max(s.shape[1] for s, _ in self._row_states)
        states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s, _ in self._row_states])
        mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in self._row_states])
        self._encoded(states, mask)

    def set_row_prompt(self, row: int, prompt: str) -> None:
        """A new prompt for one stem from the next frame on; the other rows keep theirs."""
        prompts = list(self.prompts)
        prompts[row] = prompt
        self.set_prompt(prompts)

    # --- noise: each row from its own generator ------------------------------------------
    def _row_noise_into(self, noise: torch.Tensor) -> None:
        """Each sampled row's noise from its generator; a greedy row draws none (as alone)."""
        k = self.num_codebooks
        for i, (g, s) in enumerate(zip(self.row_generators.rows, self.row_settings, strict=True)):
            if s.temperature != 0.0:
                noise[i * k:(i + 1) * k].exponential_(1, generator=g)

    def _prepare_step(self) -> None:
        self.sampling.write(self.row_settings)
        self._prepare_steer_flag()
        self._next_noise()

    def _next_noise(self) -> None:
        self._row_noise_into(self.sampling.noise)

    def _forward_and_sample(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The re-prime's prefill: as ``MusicStream``'s, with each row's noise from its generator."""
        logits = self._decoder_logits(input_ids)
        noise = None
        if self._draws_noise():
            noise = torch.empty((self.batch * self.num_codebooks, logits.shape[-1]), dtype=torch.float32,
                                device=logits.device)
            self._row_noise_into(noise)
        if self._rows_agree():
            logits = guide(logits, self.settings.guidance_scale) if self.settings.uses_cfg else logits[: self.batch]
            tokens = draw(logits, self.settings, noise)
        else:
            tokens = draw_rows(logits, self.row_settings, noise)
        self.pos += input_ids.shape[1]
        self._write(tokens)
        return tokens


__all__ = ["RowGenerators", "StemStream"]
