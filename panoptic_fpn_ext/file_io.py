"""Atomic file writes: readers see the complete old file or the complete new one."""

import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object.

    The data goes to a temporary file next to ``path`` first (fsync'd) and is then renamed over
    ``path``; on any error the temporary file is removed and ``path`` is left unchanged.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
