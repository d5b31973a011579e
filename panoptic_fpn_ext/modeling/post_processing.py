"""The paper's panoptic heuristic as a tensor function.

:func:`combine_panoptic` gives exactly the output of Detectron2's
``combine_semantic_and_instance_outputs`` on the same inputs, at a fraction of its cost:

* Detectron2 makes several passes over the full image for every instance and for every stuff
  label. Here each considered instance is handled inside a rectangle that contains its mask, so
  the work per instance is proportional to the rectangle, not to the image.
* The rectangles come either from the caller (``mask_boxes``, e.g. :func:`paste_regions` for
  masks pasted by Detectron2) or from one pass over each considered mask.
* All stuff segments are found with one histogram of (semantic label, thing owner) pairs, and the
  panoptic map is written by one table look-up.
* On CPU the per-instance loop runs on numpy views (a fraction of torch's per-call overhead) with
  Python decisions. On other devices the decisions stay on the device as tensors, so there is no
  host-device synchronisation per instance, only a fixed handful per image (the order, the
  rectangles, the decisions, the histogram, the segment list).
"""

import math
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from detectron2.structures import Instances
from torch.nn import functional as F

__all__ = ["combine_panoptic", "paste_regions", "locate_masks", "semantic_labels"]

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1: a half-open pixel rectangle
SegmentInfo = Dict[str, Union[int, float, bool]]

# The owner map holds, per pixel, LANES * (k + 1) if candidate k claimed it (0 if none) plus the
# pixel's "lane", its column mod LANES. Neighbouring pixels, which mostly share (label, owner),
# then count into different histogram bins: torch.bincount is about 2x faster when consecutive
# increments do not hit the same counter.
LANES = 8


def semantic_labels(logits: torch.Tensor) -> torch.Tensor:
    """The class of each pixel: ``logits.argmax(dim=0)``, the index of the first maximum (NaN
    counting as the maximum).

    Computed as ``logits.max(dim=0).indices``, which PyTorch documents to give the same indices;
    on CPU it is several times faster than ``argmax`` for a reduction over the leading dimension
    (``benchmarks/bench_inference.py --profile`` times both).

    Args:
        logits: float (C, H, W).
    Returns:
        int64 (H, W), values in [0, C), on the device of ``logits``.
    """
    return logits.max(dim=0).indices


def paste_regions(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pixel rectangles that Detectron2's ``paste_masks_in_image`` can set for ``boxes``.

    ``paste_masks_in_image`` (as ``detector_postprocess`` calls it, threshold 0.5) samples a mask
    only inside ``[floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1)`` on CPU, and on
    GPU it samples values below the 0.5 threshold outside the box; so every pasted mask lies
    inside these rectangles. They can be passed as ``mask_boxes`` to :func:`combine_panoptic`.

    Args:
        boxes: float (N, 4) boxes (x0, y0, x1, y1) in output-image pixels.
        height, width: output-image size in pixels.
    Returns:
        int64 (N, 4) rectangles (x0, y0, x1, y1), half-open, clipped to the image.
    """
    low = torch.clamp(boxes[:, :2].floor() - 1, min=0)
    high = boxes[:, 2:].ceil() + 1
    high = torch.minimum(high, torch.tensor([width, height], dtype=high.dtype, device=high.device))
    return torch.cat([low, high], dim=1).long()


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

    Reads each of those masks once in full, then only the rows its mask occupies; two host
    transfers in all.

    Args:
        masks: bool (N, H, W).
        indices: which masks to locate.
    Returns:
        one (x0, y0, x1, y1) half-open rectangle per index; (0, 0, 0, 0) for an empty mask.
    """
    if not indices:
        return []
    pixels = masks.view(torch.uint8)  # max over bytes = "any", and much faster than any() on bool
    rows = torch.stack([pixels[i].amax(dim=1) for i in indices]) > 0
    y0, y1 = _first_and_end(rows)
    cols = torch.stack(
        [
            pixels[i, top:bottom].amax(dim=0) if bottom > top else pixels.new_zeros(masks.shape[2])
            for i, top, bottom in zip(indices, y0, y1)
        ]
    )
    x0, x1 = _first_and_end(cols > 0)
    return list(zip(x0, y0, x1, y1))


def _candidate_order(scores: torch.Tensor, score_threshold: float) -> List[int]:
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
    if mask_boxes.is_floating_point() or mask_boxes.dtype == torch.bool:
        raise ValueError(
            f"combine_panoptic(mask_boxes=...) must be an integer tensor of pixel rectangles, "
            f"got dtype {mask_boxes.dtype}; see paste_regions()"
        )
    sizes = (width, height, width, height)
    return [
        tuple(min(max(v, 0), size) for v, size in zip(box, sizes))
        for box in mask_boxes[order].tolist()
    ]


def _empty_owner_map(
    height: int, width: int, num_candidates: int, device: torch.device
) -> torch.Tensor:
    """int16 (int32 beyond 4094 candidates) (H, W) owner map with no pixel claimed: the lanes."""
    dtype = torch.int16 if LANES * (num_candidates + 2) <= 2**15 else torch.int32
    lanes = torch.arange(width, dtype=dtype, device=device) % LANES
    return lanes.expand(height, width).contiguous()


def _place_on_host(
    owner: torch.Tensor,
    masks: torch.Tensor,
    order: List[int],
    boxes: List[Box],
    overlap_threshold: float,
) -> List[bool]:
    """:func:`_place_instances` for CPU tensors, on numpy views of them."""
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


def _place_on_device(
    owner: torch.Tensor,
    masks: torch.Tensor,
    order: List[int],
    boxes: List[Box],
    overlap_threshold: float,
) -> List[bool]:
    """:func:`_place_instances` with every decision kept on the device until the end.

    A rejected instance still runs its crop operations, with an all-False claim; the decisions
    come to the host in one transfer.
    """
    claimed = torch.zeros_like(owner, dtype=torch.bool)
    keep = []
    for rank, (index, (x0, y0, x1, y1)) in enumerate(zip(order, boxes)):
        mask = masks[index, y0:y1, x0:x1]
        region = claimed[y0:y1, x0:x1]
        area = torch.count_nonzero(mask)
        new = mask > region  # the mask's pixels that are still free
        taken = area - torch.count_nonzero(new)
        # Detectron2's test, in float64 like its Python arithmetic
        kept = (area > 0) & ~(taken.double() / area.double() > overlap_threshold)
        keep.append(kept)
        new &= kept
        owner[y0:y1, x0:x1].add_(new, alpha=LANES * (rank + 1))
        region |= new
    return torch.stack(keep).tolist() if keep else []


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

    Args:
        owner: (H, W) from :func:`_empty_owner_map`; ``LANES * (k + 1)`` is added to the pixels
            that candidate ``k`` claims (in place).
        masks: bool (N, H, W), on ``owner``'s device.
        order: K indices into ``masks``, best first.
        boxes: K rectangles (x0, y0, x1, y1), each containing its mask.
    Returns:
        K flags: which candidates were kept.
    """
    place = _place_on_host if owner.device.type == "cpu" else _place_on_device
    return place(owner, masks, order, boxes, overlap_threshold)


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
    """The labels that become stuff segments, ascending, and their free areas (one transfer).

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
    table = torch.from_numpy(table).flatten().repeat_interleave(LANES).to(code.device)
    return table.index_select(0, code.flatten()).view(code.shape)


def _segments_info(
    instance_results: Instances,
    order: List[int],
    keep: List[bool],
    stuff_labels: List[int],
    stuff_areas: List[int],
) -> List[SegmentInfo]:
    """Detectron2's ``segments_info``: kept things in rank order, then stuff by label."""
    kept = [index for index, k in zip(order, keep) if k]
    scores = instance_results.scores[kept].tolist()
    classes = instance_results.pred_classes[kept].tolist()
    info: List[SegmentInfo] = [
        {"id": i, "isthing": True, "score": s, "category_id": c, "instance_id": n}
        for i, (s, c, n) in enumerate(zip(scores, classes, kept), start=1)
    ]
    info += [
        {"id": i, "isthing": False, "category_id": c, "area": a}
        for i, (c, a) in enumerate(zip(stuff_labels, stuff_areas), start=len(info) + 1)
    ]
    return info


def combine_panoptic(
    instance_results: Instances,
    semantic_results: torch.Tensor,
    overlap_threshold: float,
    stuff_area_limit: float,
    instances_score_threshold: float,
    mask_boxes: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, List[SegmentInfo]]:
    """Combine instance and semantic outputs into a panoptic map (the paper's heuristic).

    1. Instances in descending score order (``torch.argsort(-scores)``, Detectron2's call, so
       equal scores come out in its order), stopping at the first score below
       ``instances_score_threshold``. An instance with an empty mask, or with more than
       ``overlap_threshold`` of its mask already taken, is skipped; otherwise it becomes the
       next segment and takes the free pixels of its mask.
    2. Each semantic label except 0 ("other") that occurs in the map becomes the next segment,
       in ascending label order, with its still-free pixels, unless they are fewer than
       ``stuff_area_limit``.

    The output equals Detectron2's ``combine_semantic_and_instance_outputs``.

    Args:
        instance_results: ``Instances`` at output size with ``scores`` float (N,),
            ``pred_classes`` int64 (N,) and ``pred_masks`` (N, H, W) (bool, or any dtype whose
            nonzero entries are the mask).
        semantic_results: integer (H, W) semantic labels >= 0 (0 = "other", stuff 1..S), e.g.
            the argmax of the semantic logits. Its device is the device of the result.
        overlap_threshold: largest taken share (0..1) of an instance's mask that still keeps it.
        stuff_area_limit: fewest free pixels a stuff segment may have.
        instances_score_threshold: lowest score of an instance that is considered.
        mask_boxes: optional integer (N, 4) pixel rectangles (x0, y0, x1, y1), half-open, each
            containing every nonzero pixel of its mask (for masks pasted by Detectron2, see
            :func:`paste_regions`). Without them, each considered mask is read once in full to
            find its rectangle. Rectangles that miss mask pixels give wrong results.
    Returns:
        panoptic_seg: int32 (H, W), 0 = unlabelled, segment ids 1..K.
        segments_info: K dicts in id order. Things: {"id", "isthing": True, "score" (float),
            "category_id" (the predicted class), "instance_id" (index into the instances)};
            then stuff: {"id", "isthing": False, "category_id" (the semantic label), "area"
            (pixels)}.
    """
    device = semantic_results.device
    height, width = semantic_results.shape
    masks = instance_results.pred_masks.to(dtype=torch.bool, device=device)
    order = _candidate_order(instance_results.scores, instances_score_threshold)
    if mask_boxes is None:
        boxes = locate_masks(masks, order)
    else:
        boxes = _clip_boxes(mask_boxes, order, height, width)

    owner = _empty_owner_map(height, width, len(order), device)
    keep = _place_instances(owner, masks, order, boxes, overlap_threshold)
    code, counts = _label_owner_histogram(owner, semantic_results, len(order))
    stuff_labels, stuff_areas = _stuff_labels(counts, stuff_area_limit)
    panoptic_seg = _panoptic_map(code, keep, stuff_labels, len(counts))
    return panoptic_seg, _segments_info(instance_results, order, keep, stuff_labels, stuff_areas)
