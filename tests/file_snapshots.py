"""What a folder holds, to check that a refused run changed nothing on disk."""

import os
from typing import Dict, Tuple


def snapshot(folder) -> Dict[str, Tuple[bytes, int]]:
    """Every file under ``folder``: relative path -> (content, mtime in ns)."""
    files = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return files
