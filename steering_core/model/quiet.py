"""transformers' noise that no user caused, silenced at its narrowest.

* MusicGen's composite config checks its special tokens against the decoder's vocabulary
  with the generic rule (``id < vocab_size``), while MusicGen's own decoder config allows
  ``vocab_size`` itself: its pad/BOS token is the extra embedding row, by design. The one
  warning that says so about that exact id is dropped; any other token warning stays.
* The "Loading weights" bar of a local ``from_pretrained`` (``loading_quietly``): the
  hub's download bars are left alone, since a download is worth watching.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as hf_logging

_EXTRA_ROW = re.compile(r"Model config: \w+_token_id must be `None` or an integer within the vocabulary "
                        r"\(between 0 and (\d+)\), got (\d+)\.")


class _MusicgenExtraRow(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        match = _EXTRA_ROW.match(record.getMessage())
        return not (match and int(match.group(2)) == int(match.group(1)) + 1)


_FILTER = _MusicgenExtraRow()


def quiet_musicgen_configs() -> None:
    """Idempotent: one filter on the logger of the generic token check."""
    logger = logging.getLogger("transformers.configuration_utils")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@contextmanager
def loading_quietly() -> Iterator[None]:
    """transformers' progress bars off for the block (as they were after)."""
    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()
