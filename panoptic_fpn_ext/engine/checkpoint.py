"""A DetectionCheckpointer whose files are never half-written.

fvcore's Checkpointer writes ``model_XXXX.pth`` and ``last_checkpoint`` in place: a process killed
mid-write leaves a truncated file (and, for ``last_checkpoint``, possibly an empty tag that a
resumed run cannot use). Here both are written to a temporary file in the same directory, flushed
to disk, and renamed over the target, so readers only ever see a complete old or new file.
"""

import os
from typing import Any, List, NamedTuple, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..file_io import atomic_write

__all__ = ["AtomicDetectionCheckpointer"]


class SavedCheckpoint(NamedTuple):
    """A checkpoint written by this process: its file, iteration, and whether every floating
    point weight in it was finite."""

    path: str
    iteration: Optional[int]
    weights_finite: bool


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and ``tag_last_checkpoint`` (local paths).

    ``saved`` lists the checkpoints this object wrote, oldest first (:class:`SavedCheckpoint`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.saved: List[SavedCheckpoint] = []

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
        weights = [v for v in data["model"].values() if v.is_floating_point()]
        finite = all(bool(torch.isfinite(v).all()) for v in weights)
        self.saved.append(SavedCheckpoint(save_file, kwargs.get("iteration"), finite))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(tag, lambda f: f.write(last_filename_basename.encode()))
