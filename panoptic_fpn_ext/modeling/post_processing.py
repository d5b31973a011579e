"""The paper's panoptic heuristic as a tensor function, and the helpers the model calls around it.

:func:`combine_panoptic` gives exactly the output of Detectron2's
``combine_semantic_and_instance_outputs`` on the same inputs, at a fraction of its cost, by one of
two paths:

* sequential (:mod:`.placement`, the default on CPU): Detectron2 makes several passes over the
  full image for every instance and for every stuff label. Here each considered instance is
  handled inside a rectangle that contains its mask, by compiled loops, so the work per instance
  is proportional to the rectangle, not to the image. The rectangles come either from the caller
  (``mask_boxes``, e.g. :func:`paste_regions` for masks pasted by Detectron2) or from one pass
  over each considered mask, shared among torch's intra-op threads. Two passes over the image
  then find and write every stuff segment.
* parallel (:mod:`.fixed_point`, the default on other devices): every instance is decided at
  once by a fixed point over the list of mask pixels, so the number of operators (GPU kernels)
  and host synchronisations per image does not grow with the number of instances beyond a few
  fixed-point rounds.
"""

from typing import Dict, List, Optional, Tuple, Union

import torch
from detectron2.structures import Instances

from .fixed_point import combine_parallel
from .placement import Placement, Threshold, combine_sequential

__all__ = ["combine_panoptic", "paste_regions", "semantic_labels"]

SegmentInfo = Dict[str, Union[int, float, bool]]
METHODS = ("auto", "sequential", "parallel")


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


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _segments_info(instance_results: Instances, placement: Placement) -> List[SegmentInfo]:
    """Detectron2's ``segments_info``: kept things in rank order, then stuff by label."""
    kept = [index for index, k in zip(placement.order, placement.keep) if k]
    scores = instance_results.scores[kept].tolist()
    classes = instance_results.pred_classes[kept].tolist()
    info: List[SegmentInfo] = [
        {"id": i, "isthing": True, "score": s, "category_id": c, "instance_id": n}
        for i, (s, c, n) in enumerate(zip(scores, classes, kept), start=1)
    ]
    stuff = zip(placement.stuff_labels, placement.stuff_areas)
    info += [
        {"id": i, "isthing": False, "category_id": c, "area": a}
        for i, (c, a) in enumerate(stuff, start=len(info) + 1)
    ]
    return info


def combine_panoptic(
    instance_results: Instances,
    semantic_results: torch.Tensor,
    overlap_threshold: Threshold,
    stuff_area_limit: Threshold,
    instances_score_threshold: float,
    mask_boxes: Optional[torch.Tensor] = None,
    method: str = "auto",
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

    The output equals Detectron2's ``combine_semantic_and_instance_outputs``, on either path.

    Args:
        instance_results: ``Instances`` at output size with ``scores`` float (N,),
            ``pred_classes`` int64 (N,) and ``pred_masks`` (N, H, W) (bool, or any dtype whose
            nonzero entries are the mask).
        semantic_results: integer (H, W) semantic labels >= 0 (0 = "other", stuff 1..S), e.g.
            the argmax of the semantic logits. Its device is the device of the result.
        overlap_threshold: largest taken share (0..1) of an instance's mask that still keeps it;
            or a float64 (N,) tensor, one threshold per instance (by instance index).
        stuff_area_limit: fewest free pixels a stuff segment may have; or a float64 (L,)
            tensor, one limit per semantic label, L > the largest label. The tensor forms are a
            hook for analyses that change a decision for chosen instances or labels only
            (:mod:`panoptic_fpn_ext.evaluation.pq_errors`); a tensor whose entries are all equal
            gives the same output as that number.
        instances_score_threshold: lowest score of an instance that is considered.
        mask_boxes: optional integer (N, 4) pixel rectangles (x0, y0, x1, y1), half-open, each
            containing every nonzero pixel of its mask (for masks pasted by Detectron2, see
            :func:`paste_regions`). The sequential path then reads only these rectangles;
            without them, it reads each considered mask once in full to find its rectangle.
            Rectangles that miss mask pixels give wrong results. The parallel path ignores them.
        method: "sequential" (CPU only), "parallel" (any device), or "auto": sequential on CPU,
            parallel elsewhere.
    Returns:
        panoptic_seg: int32 (H, W), 0 = unlabelled, segment ids 1..K.
        segments_info: K dicts in id order. Things: {"id", "isthing": True, "score" (float),
            "category_id" (the predicted class), "instance_id" (index into the instances)};
            then stuff: {"id", "isthing": False, "category_id" (the semantic label), "area"
            (pixels)}.
    """
    if method not in METHODS:
        raise ValueError(f"combine_panoptic(method={method!r}): expected one of {METHODS}")
    if mask_boxes is not None and not _is_integer(mask_boxes):
        raise ValueError(
            f"combine_panoptic(mask_boxes=...) must be an integer tensor of pixel rectangles, "
            f"got dtype {mask_boxes.dtype}; see paste_regions()"
        )
    device = semantic_results.device
    if method == "auto":
        method = "sequential" if device.type == "cpu" else "parallel"
    if method == "sequential" and device.type != "cpu":
        raise ValueError(
            f"combine_panoptic(method='sequential') runs on CPU tensors; semantic_results is on "
            f"{device}: use method='parallel' or 'auto'"
        )
    masks = instance_results.pred_masks.to(dtype=torch.bool, device=device)
    scores = instance_results.scores
    thresholds = (overlap_threshold, stuff_area_limit, instances_score_threshold)
    if method == "sequential":
        placement = combine_sequential(masks, scores, semantic_results, *thresholds, mask_boxes)
    else:
        placement, _ = combine_parallel(masks, scores, semantic_results, *thresholds)
    return placement.panoptic_seg, _segments_info(instance_results, placement)
