"""The paper's panoptic heuristic with tensors in and tensors out, for ``torch.export``.

:func:`combine_panoptic_table` gives the output of
:func:`panoptic_fpn_ext.modeling.combine_panoptic` (and so of Detectron2's
``combine_semantic_and_instance_outputs``) as a panoptic map plus a segment table of tensors. It
has no Python branch on tensor values and no host transfer: the instances that reach the
heuristic (Detectron2's order, up to the first score below the threshold) are visited by a
``while_loop`` whose length is their count, a data-dependent size. Each instance's mask is asked
for only when it is visited, as a rectangle of the image (:data:`MaskRegion`), so a model can
paste one mask at a time, inside its box. The number of segments is the other data-dependent
size.
"""

from typing import Callable, Dict, Tuple

import torch
from torch._higher_order_ops import while_loop

__all__ = ["combine_panoptic_table", "full_image_masks", "MaskRegion", "SEGMENT_FIELDS"]

# The segment table's tensors, in the order the exported model returns them after the map.
SEGMENT_FIELDS = ("id", "category", "is_thing", "score", "area")

# Instance index (int64 (1,)) -> (rows int64 (R,), columns int64 (Q,), bool (R, Q)): the rows and
# columns of the image that may hold the instance's mask, and the mask there (False elsewhere).
MaskRegion = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def full_image_masks(masks: torch.Tensor) -> MaskRegion:
    """The :data:`MaskRegion` of masks already pasted: (N, H, W), nonzero = in the mask."""
    rows = torch.arange(masks.shape[1], device=masks.device)
    cols = torch.arange(masks.shape[2], device=masks.device)

    def region(index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return rows, cols, masks.index_select(0, index)[0].bool()

    return region


def considered_instances(scores: torch.Tensor, score_threshold: float) -> torch.Tensor:
    """int64 (C,): the instances the heuristic visits, best first: Detectron2's order
    (``torch.argsort(-scores)``), up to the first score below ``score_threshold`` (compared in
    float64, as Detectron2 compares Python floats)."""
    order = torch.argsort(-scores)
    below = scores[order].double() < score_threshold
    return order[below.cumsum(0) == 0]


def _place_instances(
    considered: torch.Tensor,
    mask_region: MaskRegion,
    height: int,
    width: int,
    overlap_threshold: float,
) -> Dict[str, torch.Tensor]:
    """Let the considered instances claim pixels in turn (Detectron2's rule).

    Args:
        considered: int64 (C,) instance indices, best first.
    Returns:
        owner: int32 (H, W), rank + 1 of the claimant, 0 for a free pixel;
        kept: bool (C,); claimed_area: int64 (C,) pixels each rank claimed (0 if not kept).
    """
    device = considered.device

    def more(rank, owner, kept, claimed_area):
        return rank < considered.shape[0]

    def claim(rank, owner, kept, claimed_area):
        rows, cols, mask = mask_region(considered.index_select(0, rank.view(1)))
        region = (rows[:, None], cols[None, :])
        owned = owner.index_select(0, rows).index_select(1, cols)
        area = mask.sum()
        new = mask & (owned == 0)
        new_area = new.sum()
        taken = area - new_area
        # Detectron2's test ``area > 0 and not taken / area > threshold`` in float64
        keep = (area > 0) & ~(taken.double() / area.double() > overlap_threshold)
        new = new & keep
        owner = owner.index_put(region, torch.where(new, (rank + 1).int(), owned))
        kept = kept.index_put((rank.view(1),), keep.view(1))
        claimed_area = claimed_area.index_put((rank.view(1),), (new_area * keep).view(1))
        return rank + 1, owner, kept, claimed_area

    start = (
        torch.zeros((), dtype=torch.int64, device=device),
        torch.zeros((height, width), dtype=torch.int32, device=device),
        torch.zeros_like(considered, dtype=torch.bool),
        torch.zeros_like(considered),
    )
    _, owner, kept, claimed_area = while_loop(more, claim, start)
    return {"owner": owner, "kept": kept, "claimed_area": claimed_area}


def combine_panoptic_table(
    scores: torch.Tensor,
    classes: torch.Tensor,
    mask_region: MaskRegion,
    semantic: torch.Tensor,
    num_semantic_classes: int,
    overlap_threshold: float,
    stuff_area_limit: float,
    instances_score_threshold: float,
) -> Dict[str, torch.Tensor]:
    """Combine instances and semantic labels into a panoptic map and a segment table.

    Same rule and same output as :func:`panoptic_fpn_ext.modeling.combine_panoptic`: things in
    descending score order (ids 1..T), each kept if its mask is non-empty and at most
    ``overlap_threshold`` of it is already taken; then each semantic label except 0 that occurs,
    by ascending label (ids T+1..), with its free pixels, unless fewer than ``stuff_area_limit``.

    Args:
        scores: float (N,); classes: int64 (N,).
        mask_region: each instance's mask (:data:`MaskRegion`; :func:`full_image_masks` for
            masks already pasted), asked for only for the instances the heuristic visits.
        semantic: int64 (H, W) labels in [0, ``num_semantic_classes``).
        num_semantic_classes: number of semantic labels (0 = "other", stuff 1..).
        overlap_threshold, stuff_area_limit, instances_score_threshold: as in
            :func:`~panoptic_fpn_ext.modeling.combine_panoptic`.
    Returns:
        "panoptic": int32 (H, W), 0 = unlabelled; and one row per segment, in id order (S,):
        "id" int64, "category" int64 (predicted class for things, semantic label for stuff),
        "is_thing" bool, "score" float32 (NaN for stuff), "area" int64 (pixels in the map).
    """
    considered = considered_instances(scores, instances_score_threshold)
    height, width = semantic.shape
    placed = _place_instances(considered, mask_region, height, width, overlap_threshold)
    kept = placed["kept"]
    thing_ids = kept.long().cumsum(0) * kept
    num_things = kept.sum()
    owner = placed["owner"].long()

    # one histogram of (label, taken) pairs: free pixels per label, then taken ones
    labels = semantic.flatten()
    taken = (owner > 0).flatten().long()
    pairs = torch.zeros(2 * num_semantic_classes, dtype=torch.int64, device=labels.device)
    pairs = pairs.scatter_add(0, labels + num_semantic_classes * taken, torch.ones_like(labels))
    free_per_label = pairs[:num_semantic_classes]
    total_per_label = free_per_label + pairs[num_semantic_classes:]
    label_range = torch.arange(num_semantic_classes, device=labels.device)
    # Detectron2's test ``not free < stuff_area_limit`` as Python numbers: exact in float64
    is_stuff = (label_range > 0) & (total_per_label > 0)
    is_stuff &= ~(free_per_label.double() < stuff_area_limit)
    stuff_ids = (num_things + is_stuff.long().cumsum(0)) * is_stuff

    # the id of each pixel, looked up in [stuff ids by label, thing ids by rank]
    ids = torch.cat([stuff_ids, thing_ids])
    index = torch.where(owner > 0, owner + (num_semantic_classes - 1), semantic)
    panoptic = ids.index_select(0, index.flatten()).view(height, width).int()

    order = considered[kept]
    stuff_labels = label_range[is_stuff]
    no_score = torch.full_like(stuff_labels, torch.nan, dtype=torch.float32)
    return {
        "panoptic": panoptic,
        "id": torch.cat([thing_ids[kept], stuff_ids[is_stuff]]),
        "category": torch.cat([classes[order].long(), stuff_labels]),
        "is_thing": torch.cat([kept[kept], torch.zeros_like(stuff_labels, dtype=torch.bool)]),
        "score": torch.cat([scores[order].float(), no_score]),
        "area": torch.cat([placed["claimed_area"][kept], free_per_label[is_stuff]]),
    }
