"""Where the dataset check keeps its verdicts: a file of digests per dataset in the user's cache.

A verdict is the digest of what was checked: the check's mode and version, the file's absolute
path, size and modification time, and what the record expects of it (its size, its segment ids).
A file changed or replaced, or a record changed, gives another digest, so a stale verdict is
never found. Only passing verdicts are kept; a stale one stays in the file (16 bytes) until the
cache folder is cleared.

The files live in ``$XDG_CACHE_HOME/panoptic_fpn_ext/dataset_check`` (``~/.cache`` when the
variable is unset), never next to the dataset or the package, which may be read-only. Each writer
writes a file of its own (temporary file + rename) holding everything it read plus what it
checked, then removes the files it read: readers take the union of the files present, so that
two processes writing at once lose nothing. Where no cache folder can be written, the check runs
without one (and says so in the log).
"""

import hashlib
import logging
import os
import re
import secrets
from typing import Optional, Set

from ..file_io import atomic_write

__all__ = ["VerdictCache", "default_cache_directory", "verdict_key"]

logger = logging.getLogger(__name__)

DIGEST_BYTES = 16


def default_cache_directory() -> str:
    """``$XDG_CACHE_HOME/panoptic_fpn_ext/dataset_check``, ``~/.cache/...`` by default."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "panoptic_fpn_ext", "dataset_check")


def verdict_key(path: str, check: str, expectation: str) -> Optional[bytes]:
    """The digest that names a verdict on the file ``path``, or None when the file cannot be
    stat'ed (missing, or not on a local file system).

    Args:
        check: the check's mode and version.
        expectation: what the record expects of the file.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    text = (
        f"{check}\0{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\0{expectation}"
    )
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).digest()


class VerdictCache:
    """The passing verdicts of one dataset's files (see the module)."""

    def __init__(self, dataset_name: str, directory: Optional[str]):
        """
        Args:
            dataset_name: names the cache files (hashed, with a readable prefix).
            directory: the cache folder; None for no cache.
        """
        self.directory = directory
        digest = hashlib.sha1(dataset_name.encode()).hexdigest()[:16]
        self.prefix = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset_name)[:64]}-{digest}."
        self.read_files = []

    def _files(self):
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [n for n in names if n.startswith(self.prefix) and n.endswith(".bin")]

    def load(self) -> Set[bytes]:
        """Every verdict in the cache files present (unreadable files are skipped)."""
        verdicts = set()
        if self.directory is None:
            return verdicts
        for name in self._files():
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            self.read_files.append(name)
            end = len(data) - len(data) % DIGEST_BYTES
            verdicts.update(data[i : i + DIGEST_BYTES] for i in range(0, end, DIGEST_BYTES))
        return verdicts

    def update(self, known: Set[bytes], passed: Set[bytes]) -> None:
        """Keep ``known`` (what :meth:`load` gave) and ``passed`` in one file, in place of the
        files read, when there is something new or more than one file to merge; logs and keeps
        going where the folder cannot be written."""
        if self.directory is None or (passed <= known and len(self.read_files) <= 1):
            return
        data = b"".join(sorted(known | passed))
        path = os.path.join(self.directory, f"{self.prefix}{secrets.token_hex(8)}.bin")
        try:
            os.makedirs(self.directory, exist_ok=True)
            atomic_write(path, lambda f: f.write(data))
        except OSError as e:
            logger.warning(
                f"Dataset check: cannot write its cache in {self.directory} ({e}); the next "
                "start checks these files again. Set XDG_CACHE_HOME to a writable folder to keep "
                "the verdicts."
            )
            return
        for name in self.read_files:
            try:
                os.remove(os.path.join(self.directory, name))
            except OSError:  # removed by another writer, which kept its verdicts
                pass
        self.read_files = [os.path.basename(path)]
