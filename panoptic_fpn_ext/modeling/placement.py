"""The combiner's sequential path: the candidates placed one after another on numpy views (CPU).

Each considered instance is handled inside a rectangle that contains its mask, so the work per
instance is proportional to the rectangle, not to the image. The rectangles come from the caller
(``mask_boxes``) or from :func:`locate_masks`. All stuff segments are found with one histogram of
(semantic label, thing owner) pairs, and the panoptic map is written by one table look-up.
"""

import math
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["Box", "Placement", "combine_sequential", "locate_masks", "candidate_order"]

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1: a half-open pixel rectangle

# The owner map holds, per pixel, LANES * (k + 1) if candidate k claimed it (0 if none) plus the
# pixel's "lane", its column mod LANES. Neighbouring pixels, which mostly share (label, owner),
# then count into different histogram bins: torch.bincount is about 2x faster when consecutive
# increments do not hit the same counter.
LANES = 8


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


def _word_view(masks: torch.Tensor) -> torch.Tensor:
    """``masks`` (bool (N, H, W), contiguous) read as the widest integers that fit a row: int64,
    int32, int16 or uint8 (N, H, W / bytes). Bool bytes are 0 or 1, so a word is > 0 exactly when
    one of its pixels is set, and its pixels are the columns ``[b * j, b * (j + 1))``."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if masks.shape[2] % size == 0 and masks.storage_offset() % size == 0:
            return masks.view(dtype)
    return masks.view(torch.uint8)


def _first_and_end(flags: torch.Tensor) -> Tuple[List[int], List[int]]:
    """Index of the first True and one past the last True of each row; (0, 0) for no True.

    Args:
        flags: bool (K, L).
    """
    start = flags.int().argmax(dim=1)
    end = flags.shape[1] - flags.flip(1).int().argmax(dim=1)
    present = flags.any(dim=1)
    return (start * present).tolist(), (end * present).tolist()


def locate_masks(masks: torch.Tensor, indices: List[int]) -> List[Box]:
    """The tight bounding rectangle of each mask ``masks[i]``, ``i`` in ``indices``.

    Each mask is read once in full, as machine words (a word is nonzero where a pixel in it is
    set), to find its occupied rows; then its occupied rows once more, OR-ing their words into
    one row whose bytes say which columns are occupied.

    Args:
        masks: CPU bool (N, H, W).
        indices: which masks to locate.
    Returns:
        one (x0, y0, x1, y1) half-open rectangle per index; (0, 0, 0, 0) for an empty mask.
    """
    if not indices:
        return []
    words = _word_view(masks.contiguous())
    rows = torch.stack([words[i].amax(dim=1) for i in indices]) > 0
    y0, y1 = _first_and_end(rows)
    words_np = words.numpy()
    columns = np.zeros((len(indices), words.shape[2]), dtype=words_np.dtype)
    for k, (i, top, bottom) in enumerate(zip(indices, y0, y1)):
        np.bitwise_or.reduce(words_np[i, top:bottom], axis=0, out=columns[k])
    x0, x1 = _first_and_end(torch.from_numpy(columns.view(np.uint8) > 0))
    return list(zip(x0, y0, x1, y1))


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


def _clip_boxes(mask_boxes: torch.Tensor, order: List[int], height: int, width: int) -> List[Box]:
    """``mask_boxes[order]`` clipped to the image (one host transfer)."""
    sizes = (width, height, width, height)
    return [
        tuple(min(max(v, 0), size) for v, size in zip(box, sizes))
        for box in mask_boxes[order].tolist()
    ]


def _empty_owner_map(height: int, width: int, num_candidates: int) -> torch.Tensor:
    """int16 (int32 beyond 4094 candidates) (H, W) owner map with no pixel claimed: the lanes."""
    dtype = torch.int16 if LANES * (num_candidates + 2) <= 2**15 else torch.int32
    lanes = torch.arange(width, dtype=dtype) % LANES
    return lanes.expand(height, width).contiguous()


def _place_instances(
    owner: torch.Tensor,
    masks: torch.Tensor,
    order: List[int],
    boxes: List[Box],
    overlap_threshold: float,
) -> List[bool]:
    """Let the candidates claim pixels in ``order``; record each claimed pixel's claimant.

    Candidate ``k`` (``masks[order[k]]``, inside ``boxes[k]``) is kept when its mask is non-empty
    and at most ``overlap_threshold`` of it is already claimed; it then claims its free pixels.
    Runs on numpy views (a fraction of torch's per-call overhead), deciding in Python.

    Args:
        owner: CPU (H, W) from :func:`_empty_owner_map`; ``LANES * (k + 1)`` is added to the
            pixels that candidate ``k`` claims (in place).
        masks: CPU bool (N, H, W).
        order: K indices into ``masks``, best first.
        boxes: K rectangles (x0, y0, x1, y1), each containing its mask.
    Returns:
        K flags: which candidates were kept.
    """
    owner_np, masks_np = owner.numpy(), masks.numpy()
    claimed = np.zeros(owner_np.shape, dtype=bool)
    keep = []
    for rank, (index, (x0, y0, x1, y1)) in enumerate(zip(order, boxes)):
        mask = masks_np[index, y0:y1, x0:x1]
        region = claimed[y0:y1, x0:x1]
        area = np.count_nonzero(mask)
        new = mask > region  # the mask's pixels that are still free
        taken = area - np.count_nonzero(new)
        # Detectron2's test, in the same Python float arithmetic
        kept = area > 0 and not taken * 1.0 / area > overlap_threshold
        keep.append(kept)
        if kept:
            owner_crop = owner_np[y0:y1, x0:x1]
            owner_crop += new * owner_np.dtype.type(LANES * (rank + 1))  # 3x a masked copy
            region |= new
    return keep


def _label_owner_histogram(
    owner: torch.Tensor, semantic: torch.Tensor, num_candidates: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts of every (semantic label, owner) pair, and each pixel's code for its pair.

    Args:
        owner: (H, W) from :func:`_place_instances`.
        semantic: integer (H, W) labels >= 0.
    Returns:
        code: int64 (H, W), ``LANES * (label * (K + 1) + owner) + lane`` with K =
            ``num_candidates`` and owner 0 for no thing, k + 1 for candidate k.
        counts: int64 (L, K + 1), L = largest label + 1: pixels per (label, owner);
            ``counts[l, 0]`` is the number of free pixels of label l.
    """
    width = num_candidates + 1
    code = owner.long().add_(semantic.long(), alpha=LANES * width)
    counts = torch.bincount(code.flatten())
    num_labels = math.ceil(counts.numel() / (LANES * width))
    counts = F.pad(counts, (0, num_labels * width * LANES - counts.numel()))
    return code, counts.view(num_labels, width, LANES).sum(dim=2)


def _stuff_labels(counts: torch.Tensor, stuff_area_limit: float) -> Tuple[List[int], List[int]]:
    """The labels that become stuff segments, ascending, and their free areas.

    A label does when it occurs in the map, is not 0 ("other"), and its free pixels are not fewer
    than ``stuff_area_limit`` (Detectron2's test, as Python numbers).

    Args:
        counts: int64 (L, K + 1) from :func:`_label_owner_histogram`.
    """
    free, total = torch.stack([counts[:, 0], counts.sum(dim=1)]).tolist()
    labels = [
        label
        for label in range(1, len(free))
        if total[label] > 0 and not free[label] < stuff_area_limit
    ]
    return labels, [free[label] for label in labels]


def _panoptic_map(
    code: torch.Tensor, keep: List[bool], stuff_labels: List[int], num_labels: int
) -> torch.Tensor:
    """Segment id of every pixel, looked up from its code.

    Thing segments get ids 1..T in rank order, then stuff segments T+1.. by ascending label.

    Args:
        code: int64 (H, W) from :func:`_label_owner_histogram`.
        keep: K flags, which candidates are thing segments.
        stuff_labels: ascending labels that are stuff segments, all < ``num_labels``.
    Returns:
        int32 (H, W).
    """
    num_things = sum(keep)
    thing_ids = np.cumsum(keep, dtype=np.int32) * np.asarray(keep, dtype=bool)
    table = np.zeros((num_labels, len(keep) + 1), dtype=np.int32)
    table[:, 1:] = thing_ids
    table[stuff_labels, 0] = np.arange(num_things + 1, num_things + 1 + len(stuff_labels))
    table = torch.from_numpy(table).flatten().repeat_interleave(LANES)
    return table.index_select(0, code.flatten()).view(code.shape)


def combine_sequential(
    masks: torch.Tensor,
    scores: torch.Tensor,
    semantic: torch.Tensor,
    overlap_threshold: float,
    stuff_area_limit: float,
    instances_score_threshold: float,
    mask_boxes: Optional[torch.Tensor] = None,
) -> Placement:
    """:func:`~panoptic_fpn_ext.modeling.combine_panoptic` on CPU tensors, one candidate after
    another.

    Args:
        masks: CPU bool (N, H, W).
        scores: float (N,).
        semantic: CPU integer (H, W) labels >= 0.
        mask_boxes: optional integer (N, 4) rectangles (x0, y0, x1, y1) containing the masks;
            located with :func:`locate_masks` when not given.
    """
    height, width = semantic.shape
    order = candidate_order(scores, instances_score_threshold)
    if mask_boxes is None:
        boxes = locate_masks(masks, order)
    else:
        boxes = _clip_boxes(mask_boxes, order, height, width)
    owner = _empty_owner_map(height, width, len(order))
    keep = _place_instances(owner, masks, order, boxes, overlap_threshold)
    code, counts = _label_owner_histogram(owner, semantic, len(order))
    stuff_labels, stuff_areas = _stuff_labels(counts, stuff_area_limit)
    panoptic_seg = _panoptic_map(code, keep, stuff_labels, len(counts))
    return Placement(panoptic_seg, order, keep, stuff_labels, stuff_areas)
