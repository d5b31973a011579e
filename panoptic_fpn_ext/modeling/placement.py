"""The combiner's sequential path: the candidates placed one after another by compiled loops (CPU).

Each considered instance is handled inside a rectangle that contains its mask, so the work per
instance is proportional to the rectangle, not to the image. The rectangles come from the caller
(``mask_boxes``) or from :func:`locate_masks`, which reads every considered mask once, as machine
words. Work that splits is shared among ``torch.get_num_threads()`` threads (the intra-op thread
count that Detectron2's own postprocessing runs with):

1. the candidates, in rank order, write their segment id into the free pixels of an owner map
   (int16, or int32 beyond 32767 candidates), inside their rectangles; without rectangles, the
   masks are located in chunks by all the threads, and each chunk is placed as soon as it is
   located, while its masks are still in the cache;
2. one pass over the image, in bands of rows, writes each pixel's owner, or the code ``~label``
   (< 0) of its semantic label if it has none, into the panoptic map, and counts each label's free
   pixels;
3. one more replaces each code by its label's stuff segment id, or 0.

The loops are compiled by numba (:mod:`panoptic_fpn_ext.evaluation.jit`) and release the GIL.
"""

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from ..evaluation.jit import jit

__all__ = [
    "Placement",
    "Threshold",
    "candidate_order",
    "combine_sequential",
    "label_limits",
    "locate_masks",
    "per_instance",
]


# torch integer dtypes the compiled loops read semantic labels in; others are converted to int64
_LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
# masks located per chunk: few, so that the threads share the work evenly and the placement
# starts early
_LOCATE_CHUNK = 4
# labels counted in the first pass over the image; a larger label costs a second pass
_LABEL_CAPACITY = 4096
# most thing segments an int16 owner map holds; beyond, it is int32
_INT16_SEGMENTS = 2**15 - 1

# A combiner threshold: one number for every instance (or label), or a 1-d tensor of one number
# per instance (or per semantic label), see :func:`per_instance` and :func:`label_limits`
Threshold = Union[float, torch.Tensor]


class Placement(NamedTuple):
    """A combiner path's result, before ``segments_info`` is written.

    panoptic_seg: int32 (H, W) segment ids (things 1..T in rank order, then stuff by label).
    order: instance indices in rank order (all considered ones, maybe more).
    keep: one flag per entry of ``order``: the instance is a thing segment.
    stuff_labels: ascending semantic labels that are stuff segments.
    stuff_areas: their areas in pixels.
    """

    panoptic_seg: torch.Tensor
    order: List[int]
    keep: List[bool]
    stuff_labels: List[int]
    stuff_areas: List[int]


_pools: Dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    """After a fork the pools' threads are gone in the child: it makes its own."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads (one per distinct size)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="panoptic_combine")
        return _pools[workers]


def _word_view(masks: torch.Tensor) -> torch.Tensor:
    """``masks`` (bool (N, H, W), contiguous) read as the widest integers that fit a row: int64,
    int32, int16 or uint8 (N, H, W / bytes). Bool bytes are 0 or 1, so a word is > 0 exactly when
    one of its pixels is set, and its pixels are the columns ``[b * j, b * (j + 1))``."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if masks.shape[2] % size == 0 and masks.storage_offset() % size == 0:
            return masks.view(dtype)
    return masks.view(torch.uint8)


@jit
def _or_row(words, columns):
    """OR of ``words`` (1-d); each word is also OR-ed into ``columns`` (same length)."""
    occupied = words.dtype.type(0)
    for j in range(words.shape[0]):
        occupied |= words[j]
        columns[j] |= words[j]
    return occupied


@jit
def _byte_extent(columns, word_bytes):
    """(first, one past the last) nonzero byte of the little-endian words ``columns``; (0, 0)
    if all are zero."""
    first, end = 0, 0
    for j in range(columns.shape[0]):
        if columns[j]:
            for b in range(word_bytes - 1, -1, -1):
                if (columns[j] >> (8 * b)) & 255:
                    first = j * word_bytes + b
            break
    for j in range(columns.shape[0] - 1, -1, -1):
        if columns[j]:
            for b in range(word_bytes):
                if (columns[j] >> (8 * b)) & 255:
                    end = j * word_bytes + b + 1
            break
    return first, end


@jit
def _locate(words, word_bytes, indices, boxes):
    """The tight rectangle of each mask ``words[indices[k]]`` into ``boxes[k]`` (x0, y0, x1, y1),
    (0, 0, 0, 0) for an empty mask, from one pass over it.

    Args:
        words: integer (N, H, V) masks read as little-endian words of ``word_bytes`` pixels.
        indices: int64 (K,).
        boxes: int64 (K, 4), written.
    """
    columns = np.empty(words.shape[2], dtype=words.dtype)
    for k in range(indices.shape[0]):
        mask = words[indices[k]]
        columns[:] = 0
        first, end = mask.shape[0], 0
        for y in range(mask.shape[0]):
            if _or_row(mask[y], columns):
                first = min(first, y)
                end = y + 1
        x0, x1 = _byte_extent(columns, word_bytes)
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = x0, first if end else 0, x1, end


class _Locating:
    """Masks located chunk by chunk (:data:`_LOCATE_CHUNK` masks each, see :func:`_locate`), in
    order, by ``torch.get_num_threads() - 1`` worker threads and by the thread that waits for a
    chunk, which locates the next unclaimed ones until its chunk is done."""

    def __init__(self, masks: torch.Tensor, indices: np.ndarray):
        """Start locating ``masks[indices]`` (CPU bool (N, H, W); int64 (K,))."""
        words = _word_view(masks.contiguous())
        self._words, self._word_bytes = words.numpy(), words.dtype.itemsize
        self._indices = indices
        self.boxes = np.zeros((len(indices), 4), dtype=np.int64)
        self.chunks = [
            slice(lo, lo + _LOCATE_CHUNK) for lo in range(0, len(indices), _LOCATE_CHUNK)
        ]
        self._done = [threading.Event() for _ in self.chunks]
        self._unclaimed = itertools.count()  # next() is atomic: each chunk is claimed once
        workers = min(torch.get_num_threads() - 1, len(self.chunks))
        self._workers = [_pool(workers).submit(self._work) for _ in range(workers)]

    def _locate_next(self) -> bool:
        """Claim the first unclaimed chunk and locate it; False if none is left."""
        k = next(self._unclaimed)
        if k >= len(self.chunks):
            return False
        try:
            part = self.chunks[k]
            _locate(self._words, self._word_bytes, self._indices[part], self.boxes[part])
        finally:
            self._done[k].set()
        return True

    def _work(self) -> None:
        while self._locate_next():
            pass

    def located(self, k: int) -> np.ndarray:
        """int64 (chunk size, 4): the rectangles of chunk ``k``, once located."""
        while not self._done[k].is_set():
            if not self._locate_next():
                self._done[k].wait()
        return self.boxes[self.chunks[k]]

    def finish(self) -> np.ndarray:
        """Wait for every chunk (raising a worker's error); returns all rectangles (K, 4)."""
        for k in range(len(self.chunks)):
            self.located(k)
        for worker in self._workers:
            worker.result()
        return self.boxes


def locate_masks(masks: torch.Tensor, indices: List[int]) -> np.ndarray:
    """The tight bounding rectangle of each mask ``masks[i]``, ``i`` in ``indices``.

    Each mask is read once, as machine words (a word is nonzero where a pixel in it is set): its
    occupied rows are the rows with a nonzero word, and the OR of its rows says which columns are
    occupied. Chunks of masks are shared among ``torch.get_num_threads()`` threads.

    Args:
        masks: CPU bool (N, H, W).
        indices: which masks to locate.
    Returns:
        int64 (K, 4) half-open rectangles (x0, y0, x1, y1); (0, 0, 0, 0) for an empty mask.
    """
    return _Locating(masks, np.asarray(indices, dtype=np.int64)).finish()


def candidate_order(scores: torch.Tensor, score_threshold: float) -> List[int]:
    """Instances to consider, best first: Detectron2's order and stopping rule.

    Detectron2 sorts with ``torch.argsort(-scores)`` (this exact call, so equal scores come out
    in the same order) and stops at the first score below the threshold, as Python floats.

    Args:
        scores: float (N,).
    Returns:
        K <= N indices into the instances.
    """
    order = torch.argsort(-scores)
    sorted_scores = scores[order].tolist()
    stop = next((k for k, s in enumerate(sorted_scores) if s < score_threshold), len(order))
    return order[:stop].tolist()


def per_instance(overlap_threshold: Threshold, num_instances: int) -> torch.Tensor:
    """float64 (N,) CPU: the overlap threshold of each instance, by instance index.

    Args:
        overlap_threshold: one number for all, or a 1-d tensor of N numbers (e.g. a relaxed
            threshold for chosen instances, as the PQ error analysis uses).
    Raises:
        ValueError: a tensor of another shape.
    """
    if not isinstance(overlap_threshold, torch.Tensor):
        return torch.full((num_instances,), float(overlap_threshold), dtype=torch.float64)
    if overlap_threshold.shape != (num_instances,):
        raise ValueError(
            f"combine_panoptic: overlap_threshold has shape {tuple(overlap_threshold.shape)}; "
            f"expected a number or one per instance ({num_instances},)"
        )
    return overlap_threshold.detach().to(device="cpu", dtype=torch.float64)


def label_limits(stuff_area_limit: Threshold, num_labels: int) -> Union[float, torch.Tensor]:
    """The stuff area limit as a number, or float64 (num_labels,) CPU limits by semantic label.

    Args:
        stuff_area_limit: one number for all labels, or a 1-d tensor with one limit per label
            0..L-1, L >= ``num_labels`` (the largest label in the map + 1).
    Raises:
        ValueError: a tensor that is not 1-d or has fewer than ``num_labels`` entries.
    """
    if not isinstance(stuff_area_limit, torch.Tensor):
        return stuff_area_limit
    if stuff_area_limit.dim() != 1 or len(stuff_area_limit) < num_labels:
        raise ValueError(
            f"combine_panoptic: stuff_area_limit has shape {tuple(stuff_area_limit.shape)}; "
            f"expected a number or one limit per semantic label, at least {num_labels} (the "
            "largest label + 1)"
        )
    return stuff_area_limit[:num_labels].detach().to(device="cpu", dtype=torch.float64)


def _clip_boxes(mask_boxes: torch.Tensor, order: List[int], height: int, width: int) -> np.ndarray:
    """int64 (K, 4): ``mask_boxes[order]`` clipped to the image."""
    boxes = mask_boxes[order].long()
    limits = torch.tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limits).numpy()


@jit
def _count_taken(mask_row, owner_row):
    """(set pixels of ``mask_row``, those already claimed in ``owner_row``, i.e. not 0)."""
    area, taken = 0, 0
    for x in range(mask_row.shape[0]):
        pixel = np.int64(mask_row[x])
        area += pixel
        taken += pixel * (owner_row[x] != 0)
    return area, taken


@jit
def _claim(mask_row, owner_row, segment_id):
    """Write ``segment_id`` into the free pixels (0) of ``owner_row`` that ``mask_row`` sets."""
    for x in range(mask_row.shape[0]):
        current = owner_row[x]
        free_and_set = (mask_row[x] != 0) & (current == 0)
        owner_row[x] = segment_id if free_and_set else current


@jit
def _place_instances(masks, order, boxes, overlap_thresholds, owner, keep, next_id):
    """Let the candidates claim pixels in ``order``; kept ones become segments ``next_id``, ...

    Candidate ``k`` (``masks[order[k]]``, inside ``boxes[k]``) is kept when its mask is non-empty
    and at most ``overlap_thresholds[k]`` of it is already claimed (Detectron2's test, in float64
    as Python computes it); it then writes its segment id into its free pixels.

    Args:
        masks: uint8 (N, H, W), 0 or 1.
        order: int64 (K,) indices into ``masks``, best first.
        boxes: int64 (K, 4) rectangles (x0, y0, x1, y1) inside the image, each containing its mask.
        overlap_thresholds: float64 (K,), each candidate's threshold.
        owner: integer (H, W), 0 where free; the segment ids are written in place.
        keep: bool (K,), set for the kept candidates.
    Returns:
        the next segment id.
    """
    for k in range(order.shape[0]):
        mask = masks[order[k]]
        x0, y0, x1, y1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        area, taken = 0, 0
        for y in range(y0, y1):
            row_area, row_taken = _count_taken(mask[y, x0:x1], owner[y, x0:x1])
            area += row_area
            taken += row_taken
        if area > 0 and not taken * 1.0 / area > overlap_thresholds[k]:
            keep[k] = True
            for y in range(y0, y1):
                _claim(mask[y, x0:x1], owner[y, x0:x1], next_id)
            next_id += 1
    return next_id


@jit
def _code_pixels(semantic, owner, panoptic, free, total):
    """Code every pixel into ``panoptic`` (int32 (H, W)): its owner's segment id if it has one
    (``owner`` not 0), else ``~label`` (< 0), from ``semantic`` (integer (H, W)). Adds each
    label's pixels to ``total[label]`` and its free ones to ``free[label]`` (int64 (C,), labels
    >= C are not counted). Counts along runs of one label, so that neighbouring pixels do not
    wait on the same counter.

    Returns:
        the smallest and the largest label (0, -1 for no pixel).
    """
    capacity = free.shape[0]
    low, high = np.int64(0), np.int64(-1)
    if semantic.size:
        low, high = np.int64(semantic[0, 0]), np.int64(semantic[0, 0])
    for y in range(semantic.shape[0]):
        labels, owners, codes = semantic[y], owner[y], panoptic[y]
        for x in range(labels.shape[0]):
            low, high = min(low, np.int64(labels[x])), max(high, np.int64(labels[x]))
            codes[x] = owners[x] if owners[x] != 0 else ~np.int32(labels[x])
        current, run, run_free = np.int64(0), 0, 0
        if labels.shape[0]:
            current = np.int64(labels[0])
        for x in range(labels.shape[0]):
            if labels[x] != current:
                if 0 <= current < capacity:
                    total[current] += run
                    free[current] += run_free
                current, run, run_free = np.int64(labels[x]), 0, 0
            run += 1
            run_free += owners[x] == 0
        if 0 <= current < capacity:
            total[current] += run
            free[current] += run_free
    return low, high


@jit
def _write_stuff(panoptic, stuff_ids):
    """Replace each free pixel's code ``~label`` in ``panoptic`` (int32 (h, W)) by
    ``stuff_ids[label]`` (int32 (L,), 0 for no segment)."""
    for y in range(panoptic.shape[0]):
        codes = panoptic[y]
        for x in range(codes.shape[0]):
            current = codes[x]
            codes[x] = stuff_ids[max(~current, 0)] if current < 0 else current


def _row_bands(height: int) -> List[slice]:
    """Rows ``0:height`` cut into bands, one per torch intra-op thread (at most one per row)."""
    bands = max(1, min(torch.get_num_threads(), height))
    cuts = np.linspace(0, height, bands + 1).astype(int)
    return [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _run_bands(kernel: Callable, calls: List[tuple]) -> list:
    """``kernel(*args)`` for each ``args`` of ``calls``, the first in this thread, the others in
    worker threads at the same time; their results, in order."""
    futures = [_pool(len(calls) - 1).submit(kernel, *args) for args in calls[1:]]
    return [kernel(*calls[0])] + [future.result() for future in futures]


def _coded_pixels(
    semantic: torch.Tensor, owner: np.ndarray, panoptic: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_code_pixels` of the CPU integer (H, W) labels ``semantic``, in bands of rows
    (:func:`_row_bands`); returns int64 (L,) free and total pixels of each label, L = largest
    label + 1. Labels outside [0, 2**31 - 1) are refused."""
    if semantic.dtype not in _LABEL_DTYPES:
        semantic = semantic.long()
    labels = semantic.contiguous().numpy()
    bands = _row_bands(len(labels))

    def code(capacity: int) -> Tuple[int, int, np.ndarray]:
        counts = np.zeros((len(bands), 2, capacity), dtype=np.int64)
        calls = [(labels[b], owner[b], panoptic[b], *counts[k]) for k, b in enumerate(bands)]
        lows, highs = zip(*_run_bands(_code_pixels, calls))
        return min(lows), max(highs), counts.sum(axis=0)

    low, high, counts = code(_LABEL_CAPACITY)
    if low < 0 or high >= 2**31 - 1:
        raise ValueError(
            f"combine_panoptic: semantic_results has labels from {low} to {high}; labels are "
            f"in [0, 2**31 - 1), 0 being 'other'"
        )
    if high >= _LABEL_CAPACITY:  # count again, with room for every label
        _, _, counts = code(high + 1)
    return counts[0, : high + 1], counts[1, : high + 1]


def _stuff_labels(
    free: np.ndarray, total: np.ndarray, stuff_area_limit: Threshold
) -> Tuple[List[int], List[int]]:
    """The labels that become stuff segments, ascending, and their free areas.

    A label does when it occurs in the map, is not 0 ("other"), and its free pixels are not fewer
    than ``stuff_area_limit`` (Detectron2's test, as Python numbers), or than its own entry of
    ``stuff_area_limit`` when that is a tensor of limits by label (see :func:`label_limits`).
    """
    free, total = free.tolist(), total.tolist()
    limits = label_limits(stuff_area_limit, len(free))
    if isinstance(limits, torch.Tensor):
        limits = limits.tolist()
    else:
        limits = [limits] * len(free)
    labels = [
        label
        for label in range(1, len(free))
        if total[label] > 0 and not free[label] < limits[label]
    ]
    return labels, [free[label] for label in labels]


def combine_sequential(
    masks: torch.Tensor,
    scores: torch.Tensor,
    semantic: torch.Tensor,
    overlap_threshold: Threshold,
    stuff_area_limit: Threshold,
    instances_score_threshold: float,
    mask_boxes: Optional[torch.Tensor] = None,
) -> Placement:
    """:func:`~panoptic_fpn_ext.modeling.combine_panoptic` on CPU tensors, one candidate after
    another.

    Args:
        masks: CPU bool (N, H, W).
        scores: float (N,).
        semantic: CPU integer (H, W) labels >= 0.
        overlap_threshold, stuff_area_limit: a number, or a tensor by instance (by label), see
            :func:`per_instance` and :func:`label_limits`.
        mask_boxes: optional integer (N, 4) rectangles (x0, y0, x1, y1) containing the masks;
            located with :func:`locate_masks` when not given.
    """
    height, width = semantic.shape
    order = candidate_order(scores, instances_score_threshold)
    ranked = np.asarray(order, dtype=np.int64)
    thresholds = per_instance(overlap_threshold, len(scores)).numpy()[ranked]
    owner_dtype = np.int16 if len(order) <= _INT16_SEGMENTS else np.int32
    owner = np.zeros((height, width), dtype=owner_dtype)
    keep = np.zeros(len(order), dtype=np.bool_)
    masks_np = masks.contiguous().numpy().view(np.uint8)
    if mask_boxes is None:  # each chunk is placed as soon as it is located, still in the cache
        locating, next_id = _Locating(masks, ranked), 1
        for k, part in enumerate(locating.chunks):
            boxes = locating.located(k)
            args = (ranked[part], boxes, thresholds[part], owner, keep[part], next_id)
            next_id = _place_instances(masks_np, *args)
        locating.finish()
    else:
        boxes = _clip_boxes(mask_boxes, order, height, width)
        next_id = _place_instances(masks_np, ranked, boxes, thresholds, owner, keep, 1)
    num_things = next_id - 1
    panoptic = torch.empty((height, width), dtype=torch.int32)
    free, total = _coded_pixels(semantic, owner, panoptic.numpy())
    stuff_labels, stuff_areas = _stuff_labels(free, total, stuff_area_limit)
    stuff_ids = np.zeros(len(free), dtype=np.int32)
    stuff_ids[stuff_labels] = np.arange(len(stuff_labels)) + num_things + 1
    codes = panoptic.numpy()
    _run_bands(_write_stuff, [(codes[band], stuff_ids) for band in _row_bands(height)])
    return Placement(panoptic, order, keep.tolist(), stuff_labels, stuff_areas)
