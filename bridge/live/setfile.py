"""The stems of a set: ``serve --stem NAME=PROMPT`` (repeatable) or ``serve --set FILE.yaml``.

A set file (parsed with ``safeyaml``; a bad one is refused in one line, naming the key)::

    vectors: [vectors/timbre.safetensors, vectors/tempo.safetensors]   # optional, shared
    stems:
      drums:
        prompt: punchy electronic drums
        seed: 1                     # optional: serve's --seed plus the stem's index
        chain: default              # optional: an effect chain preset or .yaml
        knobs: {timbre: [-4, 4]}    # optional: a concept's alpha range on this stem
        gen: {temperature: 0.8}     # optional: its own sampling settings (/gen/* names)
      bass:
        prompt: deep sub bass line

A stem's name is its OSC prefix (``/stem/<name>/...``), its JACK ports (``<name>_L/_R``)
and its recording's suffix, so it is never a path: 1 to 32 of a-z, 0-9, ``_`` and ``-``,
starting with a letter or digit, and not ``out`` (the mix's ports). The directions
(vectors) are the batch's, shared by every stem; a stem chooses the range its knobs span.
Torch-free: the command line checks a set before the model loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering_core.errors import UserError
from steering_core.stream.settings import SETTING_BY_NAME

from .safeyaml import load_yaml_file
from .targets import MAX_PROMPT_CHARS, MAX_SEED

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
RESERVED_NAMES = ("out", "add", "remove")  # out: the mix's JACK ports; add, remove: /stem/add, /stem/remove
#: A spare row of a set (``serve --stem-spares``) is named ``spare<row>`` until a stem takes it.
SPARE_RE = re.compile(r"spare[0-9]+")
MAX_STEMS = 16
STEM_KEYS = ("prompt", "seed", "chain", "knobs", "gen")
SET_KEYS = ("vectors", "stems")


class SetFileError(UserError):
    """A set file or --stem that cannot be played; nothing was started."""


@dataclass(frozen=True)
class StemSpec:
    """One stem as asked for: its name, prompt, seed, effect chain and knob ranges."""

    name: str
    prompt: str
    seed: int
    chain: str = "default"
    knobs: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: Its own sampling settings by control name (``temperature``, ``top_k``...); the rest are serve's.
    gen: Mapping[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True)
class StemSet:
    stems: tuple[StemSpec, ...]
    vectors: tuple[str, ...] = ()


def check_stem_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED_NAMES or SPARE_RE.fullmatch(name):
        raise SetFileError(f"{where}: stem name {str(name)[:40]!r} must be 1-32 of a-z, 0-9, _ and -, "
                           f"starting with a letter or digit, and not {', '.join(RESERVED_NAMES)} or spare<n>")
    return name


def parse_stem_args(values: Sequence[str], base_seed: int, chain: str) -> StemSet:
    """``--stem NAME=PROMPT`` values; stem ``i`` plays seed ``base_seed + i`` through ``chain``."""
    stems = []
    for i, value in enumerate(values):
        name, sep, prompt = value.partition("=")
        if not sep:
            raise SetFileError(f"--stem {value[:60]!r}: write NAME=PROMPT, e.g. --stem drums='punchy drums'")
        stems.append(StemSpec(check_stem_name(name.strip(), "--stem"), _prompt(prompt, f"--stem {name}"),
                              _seed(base_seed + i, f"--stem {name}"), chain))
    return _checked(stems, (), "--stem")


def load_set_file(path: str | Path, base_seed: int, chain: str) -> StemSet:
    """A set file's stems (see the module doc); relative vector paths are the file's own."""
    path = Path(path)
    where = path.name
    try:
        raw = load_yaml_file(path)
    except OSError as exc:
        raise SetFileError(f"--set {path}: {exc.strerror or exc}") from None
    except UserError as exc:
        raise SetFileError(f"--set {where}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stems"), dict) or not raw["stems"]:
        raise SetFileError(f"{where}: a set file maps 'stems' to named stems, e.g. stems: {{drums: {{prompt: ...}}}}")
    _known_keys(raw, SET_KEYS, where)
    vectors = raw.get("vectors", [])
    if isinstance(vectors, str):
        vectors = [vectors]
    if not isinstance(vectors, list) or not all(isinstance(v, str) and v for v in vectors):
        raise SetFileError(f"{where}: 'vectors' must be a file or folder, or a list of them")
    stems = []
    # Stem i without a seed plays --seed + i, or the next seed after it that no stem has:
    # two stems on one seed would draw the same sampling noise.
    used = {b.get("seed") for b in raw["stems"].values() if isinstance(b, dict)}
    for i, (name, body) in enumerate(raw["stems"].items()):
        name = check_stem_name(name, where)
        at = f"{where}: stem {name}"
        if isinstance(body, str):
            body = {"prompt": body}
        if not isinstance(body, dict):
            raise SetFileError(f"{at}: give it a prompt (drums: punchy drums) or a mapping with 'prompt'")
        _known_keys(body, STEM_KEYS, at)
        seed = body.get("seed")
        if seed is None:
            seed = base_seed + i
            while seed in used:
                seed += 1
            used.add(seed)
        stems.append(StemSpec(name, _prompt(body.get("prompt"), at), _seed(seed, at),
                              _chain(body.get("chain", chain), at), _knobs(body.get("knobs", {}), at),
                              _gen(body.get("gen", {}), at)))
    resolved = tuple(str(p if Path(p).is_absolute() else path.parent / p) for p in vectors)
    return _checked(stems, resolved, where)


def _checked(stems: list[StemSpec], vectors: tuple[str, ...], where: str) -> StemSet:
    if len(stems) > MAX_STEMS:
        raise SetFileError(f"{where}: {len(stems)} stems; a set plays at most {MAX_STEMS}")
    names = [s.name for s in stems]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SetFileError(f"{where}: stem {twice[0]!r} is named twice; each stem needs its own name")
    return StemSet(tuple(stems), vectors)


def _known_keys(raw: Mapping[Any, Any], keys: Sequence[str], where: str) -> None:
    unknown = [str(k)[:40] for k in raw if k not in keys]
    if unknown:
        extra = " (a stem's directions are the set's: list them under the top-level 'vectors')" \
            if "vectors" in unknown else ""
        raise SetFileError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(keys)}{extra}")


def _prompt(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PROMPT_CHARS:
        raise SetFileError(f"{where}: 'prompt' must be non-empty text of at most {MAX_PROMPT_CHARS} characters")
    return value.strip()


def _seed(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise SetFileError(f"{where}: 'seed' must be a whole number in 0..{MAX_SEED}, got {str(value)[:20]!r}")
    return value


def _chain(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 300:
        raise SetFileError(f"{where}: 'chain' must name an effect chain preset or a .yaml file")
    return value


def _knobs(value: object, where: str) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict):
        raise SetFileError(f"{where}: 'knobs' maps a concept to its alpha range, e.g. knobs: {{timbre: [-4, 4]}}")
    out = {}
    for concept, span in value.items():
        if not (isinstance(span, list) and len(span) == 2 and all(
                isinstance(x, int | float) and not isinstance(x, bool) and abs(x) <= 1e3 for x in span)
                and span[0] < span[1]):
            raise SetFileError(f"{where}: knobs {str(concept)[:40]!r} wants [low, high] numbers with low < high")
        out[str(concept)] = (float(span[0]), float(span[1]))
    return out


def _gen(value: object, where: str) -> dict[str, float | int]:
    if not isinstance(value, dict):
        raise SetFileError(f"{where}: 'gen' maps a sampling setting to its value, e.g. gen: {{temperature: 0.8}}")
    out: dict[str, float | int] = {}
    for name, x in value.items():
        setting = SETTING_BY_NAME.get(str(name))
        if setting is None:
            raise SetFileError(f"{where}: gen {str(name)[:40]!r} is no sampling setting; known: "
                               f"{', '.join(SETTING_BY_NAME)}")
        problem = setting.problem(x)
        if problem is not None:
            raise SetFileError(f"{where}: gen: {problem}")
        out[setting.name] = x
    return out
