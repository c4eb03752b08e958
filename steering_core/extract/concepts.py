"""Concept presets: contrastive prompt sets plus the defaults a knob needs.

A preset (``presets/concepts/<name>.yaml``) gives templates with slots, a list of
positive and negative words, and defaults (alpha range, site, layer span, operator,
CFG mode). ``pairs()`` expands it into prompt pairs that differ only in the concept
word, so their activation difference isolates the concept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steering_core.errors import UserError
from steering_core.paths import PRESETS_DIR

CONCEPTS_DIR = PRESETS_DIR / "concepts"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ConceptError(UserError):
    """An unknown concept name or a malformed preset file."""


def check_name(name: str, what: str = "name") -> str:
    """Names are names, never paths: letters, digits, '_' and '-', at most 64."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):  # fullmatch: '$' lets "x\n" through
        raise ConceptError(f"invalid {what} {name!r}: use letters, digits, '_' and '-' only (no paths)")
    return name


@dataclass(frozen=True)
class ConceptPreset:
    name: str
    description: str
    positive_label: str
    negative_label: str
    positive_words: tuple[str, ...]
    negative_words: tuple[str, ...]
    templates: tuple[str, ...]
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    n_pairs: int = 32
    alpha_range: tuple[float, float] = (-4.0, 4.0)
    site: str = "resid_post"
    layer_span: tuple[float, float] = (0.3, 0.7)
    operator: str = "add"
    cfg_mode: str = "cond"
    layers: tuple[int, ...] | None = None  # explicit layers (e.g. from analyze) win over layer_span

    def pairs(self, seed: int = 0) -> list[tuple[str, str]]:
        """``n_pairs`` (positive, negative) prompts, identical but for the concept word."""
        fills: list[tuple[str, dict[str, str]]] = []
        for template in self.templates:
            names = [n for n in self.slots if "{" + n + "}" in template]
            for combo in itertools.product(*(self.slots[n] for n in names)):
                fills.append((template, dict(zip(names, combo, strict=False))))
        random.Random(seed).shuffle(fills)
        out = []
        for i in range(self.n_pairs):
            template, values = fills[i % len(fills)]
            j = i % min(len(self.positive_words), len(self.negative_words))
            out.append((template.format(word=self.positive_words[j], **values),
                        template.format(word=self.negative_words[j], **values)))
        return out

    def layers_for(self, num_layers: int) -> tuple[int, ...]:
        """The preset's layers: explicit ones if it names them (checked against the model),
        else its layer span (fractions of depth) as layer indices."""
        if self.layers is not None:
            bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
            if bad:
                raise ConceptError(f"concept {self.name!r} names layers {bad}; this model has 0..{num_layers - 1}")
            return self.layers
        lo = round(self.layer_span[0] * (num_layers - 1))
        hi = round(self.layer_span[1] * (num_layers - 1))
        return tuple(range(lo, max(lo, hi) + 1))

    def prompt_sha256(self, seed: int = 0) -> str:
        return hashlib.sha256(json.dumps(self.pairs(seed)).encode()).hexdigest()


def available_concepts() -> list[str]:
    return sorted(p.stem for p in CONCEPTS_DIR.glob("*.yaml"))


def load_concept(name_or_file: str | Path) -> ConceptPreset:
    """A preset by name (``tempo``) or a YAML file of the same form."""
    text = str(name_or_file)
    if text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise ConceptError(f"{path} is not a regular file (a FIFO, a device or a folder?)" if path.exists()
                               else f"no concept file at {path}")
    else:
        path = CONCEPTS_DIR / f"{check_name(text, 'concept')}.yaml"
        if not path.is_file():
            raise ConceptError(f"unknown concept {text!r}; presets: {', '.join(available_concepts())}")
    try:
        raw: dict[str, Any] = yaml.safe_load(path.read_text())
        preset = ConceptPreset(
            name=check_name(str(raw["name"]), "concept"),
            description=str(raw.get("description", "")),
            positive_label=str(raw["positive_label"]),
            negative_label=str(raw["negative_label"]),
            positive_words=tuple(str(w) for w in raw["positive_words"]),
            negative_words=tuple(str(w) for w in raw["negative_words"]),
            templates=tuple(str(t) for t in raw["templates"]),
            slots={str(k): tuple(str(v) for v in vs) for k, vs in (raw.get("slots") or {}).items()},
            n_pairs=int(raw.get("n_pairs", 32)),
            alpha_range=(float(raw["alpha_range"][0]), float(raw["alpha_range"][1])),
            site=str(raw.get("site", "resid_post")),
            layer_span=(float(raw["layer_span"][0]), float(raw["layer_span"][1])),
            operator=str(raw.get("operator", "add")),
            cfg_mode=str(raw.get("cfg_mode", "cond")),
            layers=tuple(int(x) for x in raw["layers"]) if raw.get("layers") is not None else None,
        )
        preset.pairs()  # every template must format with its slots
    except ConceptError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, yaml.YAMLError) as exc:
        raise ConceptError(f"{path}: malformed concept preset ({type(exc).__name__}: {exc})") from exc
    return preset
