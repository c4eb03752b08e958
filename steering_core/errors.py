"""One base class for mistakes in what a user gave us (a message, a file, a flag).

A ``UserError`` is reported as one line and the program carries on or exits cleanly;
anything else that escapes is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input, explained in one sentence; it changed nothing."""
