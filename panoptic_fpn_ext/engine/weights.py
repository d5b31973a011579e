"""Checkpoint paths checked before a run writes anything.

Detectron2's checkpointer resolves ``MODEL.WEIGHTS`` only when it loads it, after
``default_setup`` has written ``config.yaml`` and the log into ``OUTPUT_DIR``; a missing file or an
unreachable URL then surfaces as a bare ``FileNotFoundError``/``URLError`` that names neither the
key nor the path. :func:`resolve_weights` does the same resolution up front (Detectron2's
``PathManager``: local paths, ``detectron2://``, ``catalog://``, ``http(s)://``, downloaded into
its cache), so that the checkpointer later finds the file in the cache.
"""

import os

from detectron2.utils.file_io import PathManager

__all__ = ["WeightsNotFoundError", "resolve_weights"]


class WeightsNotFoundError(FileNotFoundError):
    """A weights path or URL that does not exist or cannot be fetched; names the key and path."""


def resolve_weights(path: str, source: str = "MODEL.WEIGHTS") -> str:
    """The local file of a checkpoint path or URL, downloading a URL into PathManager's cache.

    Args:
        path: a local path, or a URL that Detectron2's ``PathManager`` handles.
        source: what gave ``path`` (a config key, a file), for error messages.
    Returns:
        the path of an existing local file.
    Raises:
        WeightsNotFoundError: ``path`` is empty, a local file that does not exist, or a URL that
            cannot be fetched (offline, HTTP error); the message names ``source`` and ``path``.
    """
    if not path:
        raise WeightsNotFoundError(f"{source} is empty; expected a checkpoint path or URL")
    is_url = "://" in path
    try:
        local = PathManager.get_local_path(path)
    except (OSError, ValueError) as e:
        reason = "could not be downloaded" if is_url else "could not be read"
        raise WeightsNotFoundError(f"{source} = {path!r} {reason}: {e}") from e
    if not os.path.isfile(local):
        where = f" (resolved to {local})" if local != path else ""
        raise WeightsNotFoundError(f"{source} = {path!r}{where}: no such file")
    return local
