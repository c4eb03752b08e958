"""The control table of a set of stems: every per-stream row once more under ``/stem/<name>/``.

``StemTable`` is ``targets.ControlTable`` plus, for each stem, the rows a stream owns (a
concept's rows, whatever their kind, the prompt and the seed: ``per_stream``) built from
the stem's own concepts and ranges and put under its prefix, with its ``mute`` and
``solo``, and its own sampling settings (``/stem/<name>/gen/*``: the sampler holds one
value per row; the unprefixed ``/gen/*`` sets every stem's). Rows added to the table later
get their stem form the same way. Shared by every stem: transport, clock, scenes, MIDI,
subscriptions and panic.

An unprefixed per-stream address on a set of several stems acts on every stem.
``table_from_spec`` is the one way the OSC front builds the server's table again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .targets import Args, ControlError, ControlTable, Target, _prompt_parser, _switch_parser

#: A stem as the table sees it: its name and its concepts with their alpha ranges.
StemRows = tuple[str, Sequence[tuple[str, tuple[float, float]]]]


class StemTable(ControlTable):
    """The table of a set of stems (see the module doc)."""

    def __init__(self, concepts: Sequence[tuple[str, tuple[float, float]]], vocab_size: int,
                 stems: Sequence[StemRows], rows: Sequence[int] | None = None, probes: Sequence[str] = ()) -> None:
        self.stems: list[StemRows] = [(name, [(c, (float(lo), float(hi))) for c, (lo, hi) in rows])
                                      for name, rows in stems]
        #: Each stem's row in the batch (stems added while playing take spare rows, so not always 0..n-1).
        self.rows = list(range(len(stems))) if rows is None else [int(r) for r in rows]
        super().__init__(concepts, vocab_size, probes)

    @property
    def stem_names(self) -> list[str]:
        return [name for name, _ in self.stems]

    def _add_more(self) -> None:
        for row, (stem, rows) in zip(self.rows, self.stems, strict=True):
            for target in stem_targets(ControlTable(rows, self.vocab_size, self.probes), stem, row):
                self._add(target)
        self._add(Target("/stem/add", "stem_add", _stem_add_parser))
        self._add(Target("/stem/remove", "stem_remove", _stem_name_parser))

    def parse(self, address: str, args: Sequence[Any]) -> list[tuple[Target, Args]]:
        if address.startswith("/stem/") and address not in ("/stem/add", "/stem/remove") \
                and not any(c in address for c in "*?[{"):
            stem = address.split("/")[2]
            if stem not in self.stem_names:
                raise ControlError(f"no stem {stem[:64]!r} in this set (stems: {', '.join(self.stem_names)})")
        return super().parse(address, args)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "stems": [[stem, [[c, lo, hi] for c, (lo, hi) in rows]] for stem, rows in self.stems],
                "stem_rows": self.rows}


def table_from_spec(spec: Mapping[str, Any]) -> ControlTable:
    """The table ``spec()`` describes: a ``StemTable`` when it names stems."""
    if not spec.get("stems"):
        return ControlTable.from_spec(spec)
    stems = [(str(stem), [(str(c), (float(lo), float(hi))) for c, lo, hi in rows]) for stem, rows in spec["stems"]]
    concepts = [(str(name), (float(lo), float(hi))) for name, lo, hi in spec["concepts"]]
    rows = spec.get("stem_rows")
    return StemTable(concepts, int(spec["vocab_size"]), stems, None if rows is None else [int(r) for r in rows],
                     [str(name) for name in spec.get("probes", [])])


def per_stream(target: Target) -> bool:
    """Whether a row of the table is a stream's own (it gets a ``/stem/<name>/...`` form)."""
    return target.concept is not None or target.kind in ("prompt", "seed")


def stem_targets(table: ControlTable, stem: str, row: int) -> list[Target]:
    """The ``/stem/<stem>/...`` rows of one stem: every per-stream row of ``table`` (built
    from the stem's own concepts and ranges) under the prefix, fed back on the prefixed
    address and stored in scenes under the stem's name; its mute and solo. Its ``/gen/*``
    setting rows are the stem's own sampling settings."""
    prefix = f"/stem/{stem}"
    out = []
    for target in table:
        if per_stream(target) or target.kind == "setting":
            scene = None if target.scene is None else _stem_scene(stem, target.scene)
            out.append(replace(target, address=prefix + target.address, stem=stem, stream=row, scene=scene,
                               feedback=None if target.feedback is None else prefix + target.feedback))
    for kind in ("mute", "solo"):
        out.append(Target(f"{prefix}/{kind}", kind, _switch_parser, button=True, feedback=f"{prefix}/{kind}",
                          scene=("stems", f"{stem}/{kind}"), stem=stem, stream=row))
    return out


def _stem_scene(stem: str, scene: tuple[str, str]) -> tuple[str, str]:
    """Where a scene keeps a stem's row: its knobs and switches beside the set's, keyed
    ``<stem>/<concept>``; its prompt under ``stems``, keyed ``<stem>/prompt``."""
    section, key = scene
    return ("stems", f"{stem}/prompt") if section == "prompt" else (section, f"{stem}/{key}")


def _stem_name_parser(args: Sequence[Any]) -> Args:
    if len(args) != 1 or not isinstance(args[0], str):
        raise ControlError("/stem/remove takes one string: the stem's name")
    return (args[0][:200],)


def _stem_add_parser(args: Sequence[Any]) -> Args:
    """``/stem/add name prompt``: the name is checked against the set when it runs (it may be taken)."""
    if len(args) != 2 or not all(isinstance(a, str) for a in args):
        raise ControlError("/stem/add takes two strings: the new stem's name and its prompt")
    return (args[0][:200], *_prompt_parser([args[1]]))
