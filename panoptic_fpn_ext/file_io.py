"""Atomic file writes: readers see the complete old file or the complete new one."""

import os
import secrets
from typing import IO, Callable, Tuple

__all__ = ["atomic_write"]


def _create_temporary(path: str) -> Tuple[int, str]:
    """A new, empty file next to ``path``, opened for writing: (descriptor, its path).

    It is created with mode 0o666 minus the process's umask, as ``open(path, "wb")`` would
    create ``path`` itself (``tempfile.mkstemp`` would give 0o600 whatever the umask).
    """
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object.

    The data goes to a temporary file next to ``path`` first (fsync'd) and is then renamed over
    ``path``; on any error the temporary file is removed and ``path`` is left unchanged. The file
    gets the permissions the umask gives a new file (0o644 under umask 0o022).
    """
    fd, tmp = _create_temporary(path)
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
