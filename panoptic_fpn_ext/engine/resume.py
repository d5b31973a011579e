"""The checkpoint ``--resume`` continues from, checked before anything of the run is rewritten.

Detectron2 resumes from the file that ``OUTPUT_DIR/last_checkpoint`` names, joined to
``OUTPUT_DIR`` unchecked: an empty tag gives the folder itself, bytes that are not text a
``UnicodeDecodeError`` naming no file, an absolute path any file of the system, and a truncated
checkpoint PyTorch's "failed finding central directory", all after ``default_setup`` has written
``config.yaml`` and the log. :func:`resume_checkpoint` checks the tag and the file first and, when
either is damaged, raises an error that names them and the newest checkpoint of the folder that
passes the same check, with the flag that resumes from it (``--resume-from``). It never picks
another checkpoint by itself: going back some iterations is the user's decision.

What is checked of a checkpoint file (:func:`checkpoint_problem`), without reading its tensors:
PyTorch's zip format (``torch.save``'s default): the zip central directory at the end of the file
(a file cut short has none), every member lying within the file, and the ``data.pkl`` record that
lists the tensors (its CRC). A file in PyTorch's older non-zip format, or a pickle (Detectron2's
``.pkl``), is loaded whole with ``torch.load``. Anything else is refused.
"""

import os
import zipfile
from typing import List, Optional

import torch

__all__ = ["ResumeError", "checkpoint_problem", "resume_checkpoint", "RESUME_FROM_FLAG"]

LAST_CHECKPOINT = "last_checkpoint"
RESUME_FROM_FLAG = "--resume-from"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
ZIP_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header, before its name and extra


class ResumeError(ValueError):
    """A damaged ``last_checkpoint`` or checkpoint; names them and the checkpoint to resume from."""


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be loaded as a checkpoint, or None when it passes the checks.

    See the module docstring for what is checked; a zip checkpoint's tensors are not read.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is an empty file"
    if head == ZIP_MAGIC:
        return _zip_problem(path, size)
    if head.startswith(PICKLE_MAGIC):
        try:
            torch.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any failure of the loader means "cannot load"
            return f"cannot be loaded by torch.load ({type(e).__name__}: {e})"
        return None
    return "is not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _zip_problem(path: str, size: int) -> Optional[str]:
    """The zip checks of :func:`checkpoint_problem` on a file that starts like a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            records = [m for m in members if m.filename.endswith("/data.pkl")]
            if not records:
                return "is a zip archive without a data.pkl record (not a torch.save file)"
            for member in members:
                end = member.header_offset + ZIP_LOCAL_HEADER_SIZE + member.compress_size
                if end > size:
                    return f"is cut short: its member {member.filename} ends past the file's end"
            archive.read(records[0])  # checks the record's CRC
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is a damaged zip archive, cut short or overwritten ({e})"
    return None


def _candidates(output_dir: str) -> List[str]:
    """The ``.pth`` files of ``output_dir``, newest first (by modification time, then name)."""
    try:
        names = [n for n in os.listdir(output_dir) if n.endswith(".pth")]
    except OSError:
        return []
    paths = [os.path.join(output_dir, n) for n in names]
    paths = [p for p in paths if os.path.isfile(p)]
    return sorted(paths, key=lambda p: (os.path.getmtime(p), p), reverse=True)


def newest_loadable_checkpoint(output_dir: str, exclude: str = "") -> Optional[str]:
    """The newest ``.pth`` file of ``output_dir`` (other than ``exclude``) that passes
    :func:`checkpoint_problem`, or None."""
    for path in _candidates(output_dir):
        if os.path.abspath(path) != os.path.abspath(exclude) and checkpoint_problem(path) is None:
            return path
    return None


def _tag_problem(output_dir: str, content: bytes) -> Optional[str]:
    """What is wrong with the bytes of ``last_checkpoint`` itself, or None."""
    try:
        name = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        return f"is not text ({len(content)} bytes that are not UTF-8)"
    if not name:
        return "is empty (it should name the last checkpoint file of the folder)"
    if os.path.isabs(name) or os.path.dirname(os.path.normpath(name)) or name in (".", ".."):
        return f"names {name!r}, which is not a file of {output_dir}"
    return None


def resume_checkpoint(output_dir: str) -> Optional[str]:
    """The checkpoint that ``output_dir/last_checkpoint`` names, checked; None without one.

    Without ``last_checkpoint`` and without any ``.pth`` file, a run starts afresh (None), as in
    Detectron2. Reads only; writes nothing.

    Raises:
        ResumeError: ``last_checkpoint`` is empty, not text, or names a file outside
            ``output_dir``, a missing file or one that fails :func:`checkpoint_problem`; or it is
            missing while checkpoints are present (a resumed run would start from iteration 0
            and overwrite them). The message names ``last_checkpoint``, the file and the
            problem, and the newest checkpoint that passes the check, with ``--resume-from``.
    """
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.exists(tag):
        if not _candidates(output_dir):
            return None
        problem, path = "does not exist, but the folder holds checkpoints", ""
    else:
        with open(tag, "rb") as f:
            content = f.read()
        problem, path = _tag_problem(output_dir, content), ""
        if problem is None:
            path = os.path.join(output_dir, content.decode("utf-8").strip())
            damage = checkpoint_problem(path) if os.path.exists(path) else "does not exist"
            if damage is None:
                return path
            problem = f"names {path}, which {damage}"
    raise ResumeError(f"--resume: {tag} {problem}. {_way_out(output_dir, path)}")


def _way_out(output_dir: str, damaged: str) -> str:
    """The sentence that names the checkpoint to resume from instead, if any."""
    newest = newest_loadable_checkpoint(output_dir, exclude=damaged)
    if newest is None:
        return (
            f"No checkpoint in {output_dir} can be loaded: start a new run (without --resume), "
            "e.g. with another OUTPUT_DIR. Nothing was written."
        )
    return (
        f"The newest checkpoint in {output_dir} that can be loaded is {newest}: resume from it "
        f"with {RESUME_FROM_FLAG} {newest} (train_net.py), or "
        f"PanopticFPNExtTrainer.resume_or_load(checkpoint={newest!r}). Nothing was written."
    )
