"""OSC address patterns matched in linear time against the server's known addresses.

python-osc turns every pattern into a regular expression: 40 '*' in a row backtrack
exponentially while holding the GIL (the whole server freezes), and each distinct
address costs a compilation and a cache slot. Here a pattern never becomes a regex:

- a pattern without wildcard characters is a dictionary lookup;
- otherwise it is split at '/', and each part is run as a set-of-states automaton
  (Thompson simulation) over each known part at that level, so the work is at most
  ``len(pattern part) * len(known part)`` steps per candidate, with no backtracking.

Supported: ``?`` (one character), ``*`` (any run, not crossing '/'), ``[abc]``,
``[a-z]``, ``[!abc]``, ``{foo,bar}``. A malformed pattern raises ``PatternError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from steering_core.errors import UserError

WILDCARDS = frozenset("?*[]{}")
MAX_ALTERNATIVES = 16


class PatternError(UserError):
    """An address pattern that is not valid OSC. A ``UserError``, which imports nothing:
    this module runs in the OSC front process, which must start without torch."""


@dataclass(frozen=True)
class _Star:
    """A ``*`` in a pattern: any run of characters within one address part."""


@dataclass(frozen=True)
class _Class:
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    negated: bool

    def accepts(self, c: str) -> bool:
        inside = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)
        return inside != self.negated


@dataclass(frozen=True)
class _Alternatives:
    words: tuple[str, ...]


_Token = str | _Star | _Class | _Alternatives  # a str token is one literal character


def _tokens(part: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            if not (tokens and isinstance(tokens[-1], _Star)):  # '**' is '*': no extra states
                tokens.append(_Star())
            i += 1
        elif c == "?":
            tokens.append(_Class(frozenset(), (), True))
            i += 1
        elif c == "[":
            end = part.find("]", i + 1)
            if end < 0:
                raise PatternError("'[' without a closing ']'")
            body = part[i + 1:end]
            negated = body.startswith("!")
            body = body[1:] if negated else body
            chars: set[str] = set()
            ranges: list[tuple[str, str]] = []
            j = 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    ranges.append((body[j], body[j + 2]))
                    j += 3
                else:
                    chars.add(body[j])
                    j += 1
            tokens.append(_Class(frozenset(chars), tuple(ranges), negated))
            i = end + 1
        elif c == "{":
            end = part.find("}", i + 1)
            if end < 0:
                raise PatternError("'{' without a closing '}'")
            words = tuple(part[i + 1:end].split(","))
            if len(words) > MAX_ALTERNATIVES or any(set(w) & WILDCARDS for w in words):
                raise PatternError(f"'{{...}}' takes at most {MAX_ALTERNATIVES} plain words")
            tokens.append(_Alternatives(words))
            i = end + 1
        elif c in "]}":
            raise PatternError(f"unmatched {c!r}")
        else:
            tokens.append(c)
            i += 1
    return tokens


# A state is (token index, offset inside an alternative word, which word); -1 = not inside one.
_State = tuple[int, int, int]


def _closure(states: Iterable[_State], tokens: list[_Token]) -> set[_State]:
    """Add the states reachable without reading a character (a '*' may match nothing,
    an empty alternative word is already done)."""
    out: set[_State] = set()
    todo = list(states)
    while todo:
        state = todo.pop()
        if state in out:
            continue
        out.add(state)
        index, offset, word = state
        if index >= len(tokens):
            continue
        token = tokens[index]
        if isinstance(token, _Star):
            todo.append((index + 1, -1, -1))
        elif isinstance(token, _Alternatives):
            if word < 0:
                todo.extend((index, 0, w) for w in range(len(token.words)))
            elif offset == len(token.words[word]):
                todo.append((index + 1, -1, -1))
    return out


def _part_matches(tokens: list[_Token], text: str) -> bool:
    states = _closure([(0, -1, -1)], tokens)
    for c in text:
        moved: list[_State] = []
        for index, offset, word in states:
            if index >= len(tokens):
                continue
            token = tokens[index]
            if isinstance(token, _Star):
                moved.append((index, -1, -1))
            elif isinstance(token, _Alternatives):
                if word >= 0 and offset < len(token.words[word]) and token.words[word][offset] == c:
                    moved.append((index, offset + 1, word))
            elif isinstance(token, _Class):
                if token.accepts(c):
                    moved.append((index + 1, -1, -1))
            elif token == c:
                moved.append((index + 1, -1, -1))
        if not moved:
            return False
        states = _closure(moved, tokens)
    return any(index == len(tokens) for index, _, _ in states)


def describe_unknown(address: str, concepts: Iterable[str]) -> str:
    """One sentence for an address that names nothing, never echoing a long input."""
    def short(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"

    if address.startswith("/steer/"):
        name = short(address.split("/")[2], 32)
        known = ", ".join(concepts) or "none loaded"
        return f"unknown concept {name!r} in {short(address, 64)} (loaded: {known})"
    return f"unknown address {short(address, 64)}"


#: Patterns whose answers are kept: a controller sends the same few patterns again and
#: again, and a match walks every known address. Bounded: a spray of distinct patterns
#: starts the cache over rather than grow it.
MAX_CACHED_PATTERNS = 256


class AddressMatcher:
    """The known addresses, and which of them a pattern names."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self._known: dict[str, tuple[str, ...]] = {a: tuple(a.split("/")) for a in addresses}
        self._cache: dict[str, tuple[str, ...]] = {}

    def add(self, address: str) -> None:
        self._known[address] = tuple(address.split("/"))
        self._cache.clear()  # a new address may be named by a pattern seen before

    def match(self, pattern: str) -> list[str]:
        """The known addresses ``pattern`` names, in the order they were added."""
        if pattern in self._known:
            return [pattern]
        if not WILDCARDS & set(pattern):
            return []
        cached = self._cache.get(pattern)
        if cached is not None:
            return list(cached)
        parts = [_tokens(p) for p in pattern.split("/")]
        found = [address for address, known in self._known.items()
                 if len(known) == len(parts) and all(_part_matches(t, k) for t, k in zip(parts, known, strict=True))]
        if len(self._cache) >= MAX_CACHED_PATTERNS:
            self._cache.clear()
        self._cache[pattern] = tuple(found)
        return found
