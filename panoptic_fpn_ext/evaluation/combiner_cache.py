"""The combiner's inputs of every image of a dataset, kept on disk: one network pass, many
combinations (see :mod:`.threshold_sweep` and :mod:`.pq_errors`).

Per image the model's postprocessed output is reduced to what the panoptic combiner reads: the
instances' scores and classes, their masks cropped to each mask's tight rectangle and packed 8
pixels to a byte, and the semantic labels (uint8 when there are at most 256 classes). Unpacked,
they give back exactly the combiner's inputs, so a combination from the cache equals the model's
own at the same thresholds.

On disk, a cache is a folder holding ``manifest.json`` (what the predictions were made from: a
fingerprint of the weights, config, dataset and device) and shards ``shard_00000.npz``, ... of
consecutive images, each written atomically (temporary file + rename), so an interrupted network
pass keeps every complete shard and a later run predicts only the images not in one. A cache
whose fingerprint differs from the run's is refused, never reused. Memory: one shard at a time
per process, plus one image's unpacked masks.
"""

import glob
import io
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Instances

from ..file_io import atomic_write
from ..modeling.placement import locate_masks
from ..modeling.post_processing import semantic_labels

__all__ = ["CachedImage", "CombinerCache", "CacheMismatchError", "read_shard", "read_shard_ids"]

# Bumped when the shard format changes: a cache of another version is refused.
CACHE_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard_*.npz"


class CacheMismatchError(ValueError):
    """A cache folder holds predictions made from other weights, config, dataset or device."""


@dataclass
class CachedImage:
    """One image's combiner inputs, compact (numpy, CPU).

    Attributes:
        image_id: the dataset record's "image_id".
        scores: float32 (N,), classes: int64 (N,) (contiguous thing ids).
        boxes: int64 (N, 4) tight rectangles (x0, y0, x1, y1), half-open, of each mask; (0, 0,
            0, 0) for an empty mask.
        mask_bits: uint8, every mask's rectangle row by row, in instance order, 8 pixels a byte
            (``np.packbits``).
        semantic: (H, W) semantic labels (0 = "other", stuff 1..S), uint8, int16 or int32.
    """

    image_id: Any
    scores: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    mask_bits: np.ndarray
    semantic: np.ndarray

    @classmethod
    def from_output(cls, image_id: Any, output: Mapping[str, Any]) -> "CachedImage":
        """From one image's output of ``PanopticFPNExt`` (``"instances"`` with bool
        ``pred_masks`` (N, H, W), ``"sem_seg"`` float (C, H, W) logits), on any device."""
        instances = output["instances"].to("cpu")
        masks = instances.pred_masks.to(torch.bool)
        boxes = locate_masks(masks, list(range(len(masks))))
        crops = [m[y0:y1, x0:x1].ravel() for m, (x0, y0, x1, y1) in zip(masks.numpy(), boxes)]
        bits = np.concatenate(crops) if crops else np.zeros(0, dtype=np.bool_)
        labels = semantic_labels(output["sem_seg"]).cpu().numpy()
        return cls(
            image_id,
            instances.scores.float().numpy(),
            instances.pred_classes.long().numpy(),
            boxes,
            np.packbits(bits),
            labels.astype(_label_dtype(output["sem_seg"].shape[0])),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (in memory, before compression)."""
        arrays = (self.scores, self.classes, self.boxes, self.mask_bits, self.semantic)
        return sum(a.nbytes for a in arrays)

    def instances(self, device: str = "cpu") -> Tuple[Instances, torch.Tensor]:
        """The instances as the combiner takes them: ``Instances`` (H, W) with ``scores``,
        ``pred_classes`` and bool ``pred_masks`` (N, H, W) on ``device``, and the int64 (N, 4)
        CPU rectangles that contain the masks (the combiner's ``mask_boxes``)."""
        height, width = self.semantic.shape
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        bits = np.unpackbits(self.mask_bits, count=int(areas.sum())).view(np.bool_)
        masks = np.zeros((len(self.scores), height, width), dtype=np.bool_)
        starts = np.concatenate([[0], np.cumsum(areas)])
        for k, (x0, y0, x1, y1) in enumerate(self.boxes):
            masks[k, y0:y1, x0:x1] = bits[starts[k] : starts[k + 1]].reshape(y1 - y0, x1 - x0)
        result = Instances((height, width))
        result.scores = torch.from_numpy(self.scores).to(device)
        result.pred_classes = torch.from_numpy(self.classes).to(device)
        result.pred_masks = torch.from_numpy(masks).to(device)
        return result, torch.from_numpy(self.boxes)

    def semantic_labels(self, device: str = "cpu") -> torch.Tensor:
        """The semantic labels (H, W) on ``device`` (their stored integer dtype)."""
        return torch.from_numpy(self.semantic).to(device)


def _label_dtype(num_classes: int) -> np.dtype:
    for dtype in (np.uint8, np.int16):
        if num_classes <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def _shard_arrays(images: Sequence[CachedImage]) -> Dict[str, np.ndarray]:
    """The arrays of one shard file: per-image fields concatenated, with their lengths."""
    semantic_dtype = max((i.semantic.dtype for i in images), key=lambda d: d.itemsize)
    return {
        "image_ids": np.array(json.dumps([i.image_id for i in images])),
        "nbytes": np.array([i.nbytes for i in images], dtype=np.int64),
        "sizes": np.array([i.semantic.shape for i in images], dtype=np.int64).reshape(-1, 2),
        "counts": np.array([len(i.scores) for i in images], dtype=np.int64),
        "scores": np.concatenate([i.scores for i in images]),
        "classes": np.concatenate([i.classes for i in images]),
        "boxes": np.concatenate([i.boxes for i in images]).reshape(-1, 4),
        "mask_bytes": np.array([len(i.mask_bits) for i in images], dtype=np.int64),
        "mask_bits": np.concatenate([i.mask_bits for i in images]),
        "semantic": np.concatenate([i.semantic.astype(semantic_dtype).ravel() for i in images]),
    }


def _split(values: np.ndarray, lengths: np.ndarray) -> List[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []


def read_shard(path: str) -> List[CachedImage]:
    """The images of one shard file, in dataset order.

    Raises:
        ValueError: the file is not a readable shard (naming it).
    """
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        image_ids = json.loads(str(arrays["image_ids"]))
        sizes, counts = arrays["sizes"], arrays["counts"]
        fields = [
            _split(arrays["scores"], counts),
            _split(arrays["classes"], counts),
            _split(arrays["boxes"], counts),
            _split(arrays["mask_bits"], arrays["mask_bytes"]),
            _split(arrays["semantic"], sizes.prod(axis=1)),
        ]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"Cache shard {path} cannot be read ({e}); delete the cache folder") from e
    return [
        CachedImage(i, s, c, b, m, labels.reshape(size))
        for i, s, c, b, m, labels, size in zip(image_ids, *fields, sizes)
    ]


def read_shard_ids(path: str) -> List[Any]:
    """The image ids of one shard file, in order (reads only them)."""
    with np.load(path) as data:
        return json.loads(str(data["image_ids"]))


class CombinerCache:
    """A cache folder (see the module docstring)."""

    def __init__(self, directory: str, fingerprint: Mapping[str, Any], rebuild: bool = False):
        """Open ``directory`` for predictions made from ``fingerprint`` (JSON-able: what the
        network's outputs depend on), creating it if needed.

        Args:
            rebuild: delete the shards of a cache with another fingerprint instead of refusing.
        Raises:
            CacheMismatchError: the folder holds a cache of another fingerprint or version
                (the differing entries are named), and ``rebuild`` is False.
        """
        self.directory = directory
        self.fingerprint = {"cache_version": CACHE_VERSION, **fingerprint}
        manifest = os.path.join(directory, MANIFEST)
        existing = _read_manifest(manifest)
        if existing is None and self.shards():  # shards of unknown origin: never reused
            existing = {"manifest": "missing"}
        if existing is not None and existing != self.fingerprint:
            if not rebuild:
                differing = sorted(
                    k
                    for k in set(existing) | set(self.fingerprint)
                    if existing.get(k) != self.fingerprint.get(k)
                )
                raise CacheMismatchError(
                    f"Cache {directory} holds predictions made with other {', '.join(differing)} "
                    "than this run's; pass --rebuild-cache to replace it, or choose another "
                    "--cache folder"
                )
            self.clear()
        if existing != self.fingerprint:
            os.makedirs(directory, exist_ok=True)
            text = json.dumps(self.fingerprint, indent=2, sort_keys=True)
            atomic_write(manifest, lambda f: f.write(text.encode()))

    def clear(self) -> None:
        """Delete the manifest, the shards and the sweep results."""
        for path in self.shards() + [os.path.join(self.directory, MANIFEST)]:
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(os.path.join(self.directory, "results"), ignore_errors=True)

    def shards(self) -> List[str]:
        """The complete shard files, in dataset order."""
        return sorted(glob.glob(os.path.join(self.directory, SHARD_PATTERN)))

    def cached_image_ids(self) -> List[Any]:
        """Image ids of every complete shard, in order (reads only their id lists)."""
        return [i for path in self.shards() for i in read_shard_ids(path)]

    def results_directory(self, key: str) -> str:
        """A folder for results computed from this cache (e.g. one sweep), named by ``key``."""
        path = os.path.join(self.directory, "results", key)
        os.makedirs(path, exist_ok=True)
        return path

    def writer(self, shard_bytes: int, shard_images: int) -> "ShardWriter":
        """A writer of new shards, numbered after the existing ones."""
        return ShardWriter(self.directory, len(self.shards()), shard_bytes, shard_images)

    def bytes_per_image(self) -> Tuple[float, float]:
        """Mean bytes per cached image: in memory (the arrays, unpacked from the file but masks
        still packed) and on disk (compressed)."""
        memory, disk, count = 0, 0, 0
        for path in self.shards():
            with np.load(path) as data:
                memory += int(data["nbytes"].sum())
                count += len(data["nbytes"])
            disk += os.path.getsize(path)
        return (memory / count, disk / count) if count else (0.0, 0.0)


class ShardWriter:
    """Collects images and writes them as a shard (atomically) once it holds ``shard_bytes``
    bytes or ``shard_images`` images; :meth:`close` writes the rest."""

    def __init__(self, directory: str, first_index: int, shard_bytes: int, shard_images: int):
        self._directory = directory
        self._index = first_index
        self._limits = (shard_bytes, shard_images)
        self._pending: List[CachedImage] = []
        self._pending_bytes = 0
        self.written_images = 0

    def add(self, image: CachedImage) -> None:
        self._pending.append(image)
        self._pending_bytes += image.nbytes
        if self._pending_bytes >= self._limits[0] or len(self._pending) >= self._limits[1]:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **_shard_arrays(self._pending))
        path = os.path.join(self._directory, f"shard_{self._index:05d}.npz")
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
        self._index += 1
        self.written_images += len(self._pending)
        self._pending, self._pending_bytes = [], 0

    close = flush


def _read_manifest(path: str) -> Optional[Dict[str, Any]]:
    """The manifest's fingerprint; None without one; ``{"manifest": ...}`` (which matches no
    fingerprint) when it cannot be read."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return {"manifest": f"unreadable: {e}"}
