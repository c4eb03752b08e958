"""YAML from a user's file, with its cost bounded before the parser builds anything.

A few hundred bytes of YAML can name a structure of billions of nodes through aliases
(the "billion laughs" bomb), and a multi-gigabyte file is read whole by ``safe_load``.
So the file's size is checked before it is read, and its aliases are counted by the
scanner (linear, builds nothing) before it is parsed. The shipped presets use no
aliases at all; a hand-written file gets a few.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from steering_core.errors import UserError

from .userfiles import read_user_file

MAX_YAML_BYTES = 256 * 1024
MAX_ALIASES = 16


class YamlLimitError(UserError):
    """A YAML file over the size or alias limits, or not YAML at all."""


def load_yaml_file(path: Path) -> Any:
    """Parse ``path`` within the limits. Raises ``YamlLimitError`` or ``OSError``."""
    data = read_user_file(path, MAX_YAML_BYTES)
    if len(data) > MAX_YAML_BYTES:
        raise YamlLimitError(f"{path.name} is over the limit of {MAX_YAML_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        aliases = 0
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise YamlLimitError(f"{path.name} uses more than {MAX_ALIASES} YAML aliases (*name); "
                                         "write the values out")
        return yaml.safe_load(text)
    except UnicodeDecodeError:
        raise YamlLimitError(f"{path.name} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise YamlLimitError(f"{path.name}: {str(problem)[:120]}{where}") from None
