"""The paper's panoptic heuristic with tensors in and tensors out, for ``torch.export``.

:func:`combine_panoptic_table` gives the output of
:func:`panoptic_fpn_ext.modeling.combine_panoptic` (and so of Detectron2's
``combine_semantic_and_instance_outputs``) as a panoptic map plus a segment table of tensors. It
has no Python branch on tensor values and no host transfer: the instances are visited in a loop
of fixed length ``max_instances`` (unrolled when exported), padded with empty masks, and each
decision stays a tensor. The number of segments is the only data-dependent size.
"""

from typing import Dict

import torch

__all__ = ["combine_panoptic_table", "SEGMENT_FIELDS"]

# The segment table's tensors, in the order the exported model returns them after the map.
SEGMENT_FIELDS = ("id", "category", "is_thing", "score", "area")


def _padded_by_rank(
    scores: torch.Tensor, masks: torch.Tensor, score_threshold: float, max_instances: int
) -> Dict[str, torch.Tensor]:
    """The instances in Detectron2's order (``torch.argsort(-scores)``), padded to
    ``max_instances``; a rank is a candidate while no earlier score is below the threshold.

    Returns:
        order: int64 (max_instances,) instance index per rank (0 for padding);
        candidate: bool (max_instances,); masks: bool (max_instances, H, W) (empty for padding).
    """
    order = torch.argsort(-scores)
    # Detectron2 stops at the first score below the threshold, compared as Python floats
    below = scores[order].double() < score_threshold
    candidate = below.cumsum(0) == 0
    count = order.shape[0]
    rank = torch.arange(count, device=scores.device)
    height, width = masks.shape[1:]
    padded_masks = masks.new_zeros((max_instances, height, width), dtype=torch.bool)
    padded_masks.index_copy_(0, rank, masks[order].bool())
    padded_order = order.new_zeros(max_instances).index_copy_(0, rank, order)
    padded_candidate = candidate.new_zeros(max_instances).index_copy_(0, rank, candidate)
    return {"order": padded_order, "candidate": padded_candidate, "masks": padded_masks}


def _place_instances(
    masks: torch.Tensor, candidate: torch.Tensor, overlap_threshold: float
) -> Dict[str, torch.Tensor]:
    """Let the ranked candidates claim pixels in turn (Detectron2's rule).

    Args:
        masks: bool (K, H, W) in rank order; candidate: bool (K,).
    Returns:
        owner: int64 (H, W), rank + 1 of the claimant, 0 for a free pixel;
        kept: bool (K,); claimed_area: int64 (K,) pixels each rank claimed (0 if not kept).
    """
    num_ranks, height, width = masks.shape
    owner = torch.zeros((height, width), dtype=torch.int64, device=masks.device)
    claimed = torch.zeros((height, width), dtype=torch.bool, device=masks.device)
    kept, areas = [], []
    for rank in range(num_ranks):
        mask = masks[rank]
        area = mask.sum()
        new = mask & ~claimed
        new_area = new.sum()
        taken = area - new_area
        # Detectron2's test ``area > 0 and not taken / area > threshold`` in float64
        keep = candidate[rank] & (area > 0) & ~(taken.double() / area.double() > overlap_threshold)
        new = new & keep
        owner = owner + new.long() * (rank + 1)
        claimed = claimed | new
        kept.append(keep)
        areas.append(new_area * keep)
    if not num_ranks:  # max_instances == 0
        kept, areas = [candidate.new_zeros(0)], [owner.new_zeros(0)]
    else:
        kept, areas = [torch.stack(kept)], [torch.stack(areas)]
    return {"owner": owner, "kept": kept[0], "claimed_area": areas[0]}


def combine_panoptic_table(
    scores: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor,
    semantic: torch.Tensor,
    num_semantic_classes: int,
    overlap_threshold: float,
    stuff_area_limit: float,
    instances_score_threshold: float,
    max_instances: int,
) -> Dict[str, torch.Tensor]:
    """Combine instances and semantic labels into a panoptic map and a segment table.

    Same rule and same output as :func:`panoptic_fpn_ext.modeling.combine_panoptic`: things in
    descending score order (ids 1..T), each kept if its mask is non-empty and at most
    ``overlap_threshold`` of it is already taken; then each semantic label except 0 that occurs,
    by ascending label (ids T+1..), with its free pixels, unless fewer than ``stuff_area_limit``.

    Args:
        scores: float (N,); classes: int64 (N,); masks: (N, H, W), nonzero = in the mask;
            N <= ``max_instances``.
        semantic: int64 (H, W) labels in [0, ``num_semantic_classes``).
        num_semantic_classes: number of semantic labels (0 = "other", stuff 1..).
        overlap_threshold, stuff_area_limit, instances_score_threshold: as in
            :func:`~panoptic_fpn_ext.modeling.combine_panoptic`.
        max_instances: the loop length; larger N is an error (an out-of-range index).
    Returns:
        "panoptic": int32 (H, W), 0 = unlabelled; and one row per segment, in id order (S,):
        "id" int64, "category" int64 (predicted class for things, semantic label for stuff),
        "is_thing" bool, "score" float32 (NaN for stuff), "area" int64 (pixels in the map).
    """
    ranked = _padded_by_rank(scores, masks, instances_score_threshold, max_instances)
    placed = _place_instances(ranked["masks"], ranked["candidate"], overlap_threshold)
    kept = placed["kept"]
    thing_ids = kept.long().cumsum(0) * kept
    num_things = kept.sum()

    labels = semantic.flatten()
    free = (placed["owner"] == 0).flatten().long()
    total_per_label = torch.zeros(num_semantic_classes, dtype=torch.int64, device=labels.device)
    total_per_label = total_per_label.scatter_add(0, labels, torch.ones_like(labels))
    free_per_label = torch.zeros_like(total_per_label).scatter_add(0, labels, free)
    label_range = torch.arange(num_semantic_classes, device=labels.device)
    # Detectron2's test ``not free < stuff_area_limit`` as Python numbers: exact in float64
    is_stuff = (label_range > 0) & (total_per_label > 0)
    is_stuff &= ~(free_per_label.double() < stuff_area_limit)
    stuff_ids = (num_things + is_stuff.long().cumsum(0)) * is_stuff

    thing_lookup = torch.cat([thing_ids.new_zeros(1), thing_ids])[placed["owner"]]
    panoptic = torch.where(placed["owner"] > 0, thing_lookup, stuff_ids[semantic]).int()

    order = ranked["order"][kept]
    thing_scores = scores[order].float()
    stuff_labels = label_range[is_stuff]
    no_score = torch.full_like(stuff_labels, torch.nan, dtype=torch.float32)
    return {
        "panoptic": panoptic,
        "id": torch.cat([thing_ids[kept], stuff_ids[is_stuff]]),
        "category": torch.cat([classes[order].long(), stuff_labels]),
        "is_thing": torch.cat([kept[kept], torch.zeros_like(stuff_labels, dtype=torch.bool)]),
        "score": torch.cat([thing_scores, no_score]),
        "area": torch.cat([placed["claimed_area"][kept], free_per_label[is_stuff]]),
    }
