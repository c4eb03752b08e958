"""Reading a file a user named: a regular file only, bounded in size.

A name on the command line or in a message may point at a FIFO, a device or a folder.
``open`` on a FIFO blocks until a writer appears, so serve would hang at start-up with
no word. The file is opened without blocking and checked on the open descriptor (a path
swapped between a check and the open is caught too), and at most ``limit + 1`` bytes are
read, so a file over the limit is told from one at it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from steering_core.errors import UserError


class NotARegularFile(UserError):
    """The path names something other than a regular file (a FIFO, a device, a folder)."""


def read_user_file(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``path``. Raises ``NotARegularFile``
    for anything else, or the ``OSError`` of a file that cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise NotARegularFile(f"{path} is {kind}; give a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)
