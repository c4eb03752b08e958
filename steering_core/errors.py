"""One base class for mistakes in what a user gave us (a message, a file, a flag).

A ``UserError`` is reported as one line and the program carries on or exits cleanly;
anything else that escapes is a bug and keeps its traceback. Every error class the
project defines for bad input derives from it (``tests/test_cli_errors.py`` checks).
It is a ``ValueError`` so that callers which predate it still catch it.
"""


class UserError(ValueError):
    """Bad input, explained in one sentence; it changed nothing."""

    def __str__(self) -> str:
        # One sentence, as written: not KeyError's quoted repr for the subclasses below.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownConceptError(UserError, KeyError):
    """A concept name that is not loaded. Also a ``KeyError``: it is a failed lookup."""
