"""The paper's panoptic heuristic as a tensor function (no Python work per pixel).

Same output as Detectron2's ``combine_semantic_and_instance_outputs`` on the same inputs, but it
reads the full-size masks once (to find where each mask lies), works on each instance's crop, and
places all stuff segments with one histogram. Per-instance decisions stay on the device; the only
host transfers are one for the crop boxes and one for the final segment list.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.structures import Instances

__all__ = ["combine_panoptic", "mask_crop_boxes"]


def mask_crop_boxes(masks: torch.Tensor) -> List[Tuple[int, int, int, int]]:
    """A box containing each mask, to 8-pixel precision horizontally (one pass over the masks).

    Args:
        masks: bool (N, H, W).
    Returns:
        N tuples (y0, y1, x0, x1), half-open, in pixels; (0, 0, 0, 0) for an empty mask.
    """
    n, h, w = masks.shape
    if n == 0:
        return []
    pad = (-w) % 8
    if pad:
        masks = torch.nn.functional.pad(masks, (0, pad))
    # 8 pixels per int64 word: the "any" reductions read 1/8 of the elements.
    words = masks.contiguous().view(torch.uint8).view(n, h, (w + pad) // 8, 8)
    nonzero = words.view(torch.int64).squeeze(-1) != 0
    rows, cols = nonzero.any(dim=2), nonzero.any(dim=1)
    has = rows.any(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1) * 8
    x1 = torch.clamp((cols.shape[1] - cols.flip(1).int().argmax(dim=1)) * 8, max=w)
    boxes = torch.stack([y0, y1, x0, x1], dim=1) * has[:, None]
    return [tuple(b) for b in boxes.tolist()]


def _place_instances(
    panoptic_seg: torch.Tensor,
    masks: torch.Tensor,
    order: torch.Tensor,
    overlap_threshold: float,
) -> torch.Tensor:
    """Paint instances ``masks[order]`` into ``panoptic_seg`` (in place), in that order.

    An instance is kept if its mask is non-empty and at most ``overlap_threshold`` of it is
    already taken; it gets the next id on its free pixels. Decisions stay on the device.

    Args:
        panoptic_seg: int32 (H, W), zeros.
        masks: (N, H, W), nonzero = in the mask; read in place (no copy of all masks).
        order: int64 (K,), indices into ``masks`` in painting order.
    Returns:
        bool (K,), which of ``order`` were kept.
    """
    kept = torch.zeros(len(order), dtype=torch.bool, device=panoptic_seg.device)
    next_id = torch.ones((), dtype=torch.int32, device=panoptic_seg.device)
    boxes = mask_crop_boxes(masks.to(dtype=torch.bool, device=panoptic_seg.device))
    for k, index in enumerate(order.tolist()):
        y0, y1, x0, x1 = boxes[index]
        if y1 == y0:
            continue  # empty mask: never kept
        mask = masks[index, y0:y1, x0:x1].to(dtype=torch.bool, device=panoptic_seg.device)
        region = panoptic_seg[y0:y1, x0:x1]
        area = mask.sum()
        taken = (mask & (region > 0)).sum()
        keep = taken.double() / area <= overlap_threshold
        region.masked_fill_(mask & (region == 0) & keep, next_id)
        next_id = next_id + keep.int()
        kept[k] = keep
    return kept


def _place_stuff(
    panoptic_seg: torch.Tensor, semantic: torch.Tensor, first_id: int, stuff_area_limit: float
) -> List[Dict]:
    """Give each stuff label (not 0 = "other") its free pixels, if they reach the area limit.

    Args:
        panoptic_seg: int32 (H, W), modified in place.
        semantic: int64 (H, W) labels >= 0.
        first_id: id of the first stuff segment.
    Returns:
        segments_info entries of the stuff segments, by ascending label.
    """
    free = panoptic_seg == 0
    num_labels = int(semantic.max()) + 1 if semantic.numel() else 1
    # one histogram of (label, free): column 0 + 1 = pixels of the label, column 1 = free ones
    counts = torch.bincount((semantic * 2 + free).flatten(), minlength=2 * num_labels)
    counts = counts.view(num_labels, 2)
    present, areas = counts.sum(dim=1) > 0, counts[:, 1]
    keep = present & (areas >= stuff_area_limit)
    keep[0] = False
    ids = torch.where(keep, first_id - 1 + torch.cumsum(keep.int(), 0), 0).to(torch.int32)
    torch.where(free, ids[semantic], panoptic_seg, out=panoptic_seg)
    labels = torch.nonzero(keep).flatten()
    return [
        {"id": i, "isthing": False, "category_id": c, "area": a}
        for i, c, a in zip(ids[labels].tolist(), labels.tolist(), areas[labels].tolist())
    ]


def combine_panoptic(
    instance_results: Instances,
    semantic_results: torch.Tensor,
    overlap_threshold: float,
    stuff_area_limit: float,
    instances_score_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Combine instance and semantic outputs into a panoptic map (the paper's heuristic).

    1. instances by descending score (``torch.argsort(-scores)``, Detectron2's order, also for
       ties), stopping below ``instances_score_threshold``; an instance whose already-taken share
       exceeds ``overlap_threshold`` is skipped, otherwise it takes its free pixels;
    2. each stuff label takes its still-free pixels when they number at least
       ``stuff_area_limit``; label 0 ("other") never does.

    Args:
        instance_results: ``Instances`` with scores (N,), pred_classes (N,) and pred_masks
            (N, H, W) (bool, or anything whose nonzero entries are the mask), at output size.
        semantic_results: int64 (H, W) semantic labels (0 = "other", stuff 1..S).
    Returns:
        panoptic_seg: int32 (H, W), 0 = unlabelled, segment ids 1..K.
        segments_info: K dicts in id order: {"id", "isthing": True, "score", "category_id",
            "instance_id"} for things, then {"id", "isthing": False, "category_id", "area"}.
    """
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    scores = instance_results.scores
    order = torch.argsort(-scores)
    order = order[scores[order] >= instances_score_threshold]
    kept = _place_instances(panoptic_seg, instance_results.pred_masks, order, overlap_threshold)
    kept_order = order[kept.to(order.device)]
    things = [
        {"id": i + 1, "isthing": True, "score": s, "category_id": c, "instance_id": n}
        for i, (s, c, n) in enumerate(
            zip(
                scores[kept_order].tolist(),
                instance_results.pred_classes[kept_order].tolist(),
                kept_order.tolist(),
            )
        )
    ]
    stuff = _place_stuff(panoptic_seg, semantic_results, len(things) + 1, stuff_area_limit)
    return panoptic_seg, things + stuff
