"""Detectron2's R-CNN inference steps, written without Python branches on tensor values.

Each function runs the same tensor operations, in the same order, as the Detectron2 function it
names, so that its results are identical; where Detectron2 branches on a value (a count, a
validity test), both sides are computed or the branch is made unconditional with the same
result. Sizes that depend on the data (boxes kept by a filter or NMS) stay tensor sizes, which
``torch.export`` represents as unbacked symbols. NMS and ROIAlign are torchvision's operators.
"""

from typing import List, Tuple

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from torch.nn import functional as F
from torchvision.ops import nms

__all__ = [
    "batched_nms",
    "clip_boxes",
    "top_rpn_proposals",
    "detections_from_box_outputs",
    "paste_mask_region",
    "pool_regions",
    "VANILLA_NMS_ABOVE",
]

# torchvision's ``batched_nms`` runs one NMS per class when ``boxes.numel()`` exceeds this (per
# device type), else a single NMS on boxes offset per class (the "coordinate trick").
VANILLA_NMS_ABOVE = {"cpu": 4000, "cuda": 100_000}


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Boxes.clip`` without its finiteness assertion (a branch on values): float (N, 4)."""
    x1 = boxes[:, 0].clamp(min=0, max=width)
    y1 = boxes[:, 1].clamp(min=0, max=height)
    x2 = boxes[:, 2].clamp(min=0, max=width)
    y2 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``Boxes.nonempty``: bool (N,), both sides longer than ``threshold``."""
    return (boxes[:, 2] - boxes[:, 0] > threshold) & (boxes[:, 3] - boxes[:, 1] > threshold)


def _nms_per_class(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float, num_classes: int
) -> torch.Tensor:
    """torchvision's ``_batched_nms_vanilla``, over every class id in ``range(num_classes)``
    (an absent class adds nothing, so this equals its loop over the classes present)."""
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for class_id in range(num_classes):
        curr_indices = torch.where(idxs == class_id)[0]
        curr_keep_indices = nms(boxes[curr_indices], scores[curr_indices], iou)
        # index_fill_, not ``keep_mask[...] = True``: export would assume more than one index
        keep_mask.index_fill_(0, curr_indices[curr_keep_indices], True)
    keep_indices = torch.where(keep_mask)[0]
    return keep_indices[scores[keep_indices].sort(descending=True)[1]]


def _nms_offset_classes(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float
) -> torch.Tensor:
    """torchvision's ``_batched_nms_coordinate_trick`` for boxes with non-negative coordinates.

    Its ``boxes.max()`` is taken with an extra 0, which changes nothing for such boxes and
    gives an empty result, not an error, for no boxes.
    """
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    # torchvision adds ``torch.tensor(1).to(boxes)``: the same float32 sum; a tensor constant
    # cannot be serialised inside the branch of a torch.cond
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou)


def _as_ranks(keep: torch.Tensor, count: int) -> torch.Tensor:
    """int64 (count,): position of each box in ``keep``, ``count`` for boxes not in it."""
    ranks = torch.full((count,), count, dtype=torch.int64, device=keep.device)
    return ranks.scatter(0, keep, torch.arange(keep.shape[0], device=keep.device))


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    num_classes: int,
    vanilla_above: int,
) -> torch.Tensor:
    """torchvision's ``batched_nms`` (as Detectron2 calls it), with its choice of strategy made
    on a tensor when exported: ``torch.cond`` then runs the strategy torchvision would pick (in
    eager mode a Python branch does; ``torch.cond`` would compile the call there, with
    torchvision's fake NMS, which assumes that at least two boxes are kept).

    Args:
        boxes: float (N, 4), non-negative coordinates; scores: float (N,);
        idxs: int64 (N,) class ids in [0, num_classes).
        vanilla_above: ``VANILLA_NMS_ABOVE`` of the device the result must match.
    Returns:
        int64 (K,) indices of the kept boxes, by decreasing score.
    """

    def per_class(boxes, scores, idxs):
        keep = _nms_per_class(boxes, scores, idxs, iou_threshold, num_classes)
        return _as_ranks(keep, scores.shape[0])

    def offset(boxes, scores, idxs):
        return _as_ranks(_nms_offset_classes(boxes, scores, idxs, iou_threshold), scores.shape[0])

    boxes = boxes.float()
    count = scores.shape[0]
    # torchvision tests boxes.numel(); a tensor here, so that export takes no guard on the size
    numel = torch.ones_like(scores, dtype=torch.int64).sum() * 4
    if torch.compiler.is_exporting():
        ranks = torch.cond(numel > vanilla_above, per_class, offset, (boxes, scores, idxs))
    else:
        ranks = (per_class if numel > vanilla_above else offset)(boxes, scores, idxs)
    sorted_ranks, positions = ranks.sort(stable=True)
    return positions[sorted_ranks < count]


def top_rpn_proposals(
    proposals: List[torch.Tensor],
    logits: List[torch.Tensor],
    image_size: Tuple[int, int],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    vanilla_above: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Detectron2's ``find_top_rpn_proposals`` at test time, for one image.

    Its filters of non-finite and of small boxes are applied unconditionally (Detectron2 skips
    them when they would keep everything, which gives the same tensors).

    Args:
        proposals: per level float (1, Hi*Wi*A, 4); logits: per level float (1, Hi*Wi*A).
        image_size: (height, width) of the unpadded input.
    Returns:
        boxes float (R, 4) and objectness logits float (R,), R <= post_nms_topk, best first.
    """
    scores, boxes, levels = [], [], []
    for level, (proposals_i, logits_i) in enumerate(zip(proposals, logits)):
        k = torch.sym_min(logits_i.shape[1], pre_nms_topk)
        scores_i, index = logits_i[0].topk(k)
        scores.append(scores_i)
        boxes.append(proposals_i[0, index])
        levels.append(torch.full((k,), level, dtype=torch.int64, device=scores_i.device))
    scores, boxes, levels = torch.cat(scores), torch.cat(boxes), torch.cat(levels)

    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
    boxes = clip_boxes(boxes, *image_size)
    keep = _nonempty(boxes, min_box_size)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = batched_nms(boxes, scores, levels, nms_thresh, len(proposals), vanilla_above)
    keep = keep[:post_nms_topk]
    return boxes[keep], scores[keep]


def detections_from_box_outputs(
    class_logits: torch.Tensor,
    deltas: torch.Tensor,
    proposals: torch.Tensor,
    transform: Box2BoxTransform,
    use_sigmoid: bool,
    image_size: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    vanilla_above: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``FastRCNNOutputLayers.inference`` (``predict_boxes``, ``predict_probs``,
    ``fast_rcnn_inference_single_image``) for one image.

    Args:
        class_logits: float (R, K + 1); deltas: float (R, 4K) or (R, 4); proposals: float (R, 4).
    Returns:
        boxes float (D, 4), scores float (D,), classes int64 (D,), D <= ``topk_per_image``
        (when >= 0), best first.
    """
    boxes = transform.apply_deltas(deltas, proposals)
    probs = class_logits.sigmoid() if use_sigmoid else F.softmax(class_logits, dim=-1)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
    boxes, probs = boxes[valid], probs[valid]
    probs = probs[:, :-1]
    num_classes = probs.shape[1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).view(-1, num_bbox_reg_classes, 4)
    filter_mask = probs > score_thresh
    filter_inds = filter_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = probs[filter_mask]
    keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh, num_classes, vanilla_above)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    return boxes[keep], scores[keep], filter_inds[keep][:, 1]


def pool_regions(
    pooler: ROIPooler, features: List[torch.Tensor], boxes: torch.Tensor
) -> torch.Tensor:
    """``ROIPooler.forward`` for one image's boxes as a tensor (Detectron2's ``Boxes`` branches on
    their count).

    Args:
        features: the pooler's levels, float (1, C, Hl, Wl) each; boxes: float (M, 4).
    Returns:
        float (M, C, S, S) region features, S the pooler's output size.
    """
    pooler_boxes = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], pooler_boxes)
    # assign_boxes_to_levels: Eqn. (1) of the FPN paper
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(
        pooler.canonical_level + torch.log2(box_sizes / pooler.canonical_box_size + 1e-8)
    )
    levels = torch.clamp(levels, min=pooler.min_level, max=pooler.max_level)
    levels = levels.to(torch.int64) - pooler.min_level
    size = pooler.output_size[0]
    output = features[0].new_zeros((boxes.shape[0], features[0].shape[1], size, size))
    for level, level_pooler in enumerate(pooler.level_poolers):
        inds = torch.nonzero(levels == level, as_tuple=True)[0]
        output.index_put_((inds,), level_pooler(features[level], pooler_boxes[inds]))
    return output


def _pixels_between(low: torch.Tensor, high: torch.Tensor, size: int) -> torch.Tensor:
    """int64 (K,): the pixels ``i`` in ``[0, size)`` with ``low <= i < high`` (0-d floats)."""
    index = torch.arange(size, device=low.device)
    return torch.nonzero((index >= low) & (index < high))[:, 0]


def paste_mask_region(
    mask: torch.Tensor, box: torch.Tensor, height: int, width: int, threshold: float = 0.5
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``paste_masks_in_image`` for one mask, as Detectron2 computes it on CPU: sampled only in
    the rows ``[floor(y0) - 1, ceil(y1) + 1)`` and columns ``[floor(x0) - 1, ceil(x1) + 1)``
    (clipped to the image), where each pixel gets the same grid coordinate as there. On GPU
    Detectron2 samples the whole image, and outside this rectangle a sample lies more than half a
    mask cell beyond the box edge, where bilinear sampling with zero padding gives less than 0.5
    of the edge value: below the threshold (:func:`panoptic_fpn_ext.modeling.paste_regions`
    relies on the same).

    Args:
        mask: float (M, M) probabilities; box: float (4,) in output pixels.
    Returns:
        rows int64 (R,), columns int64 (Q,), and bool (R, Q): the mask there (False elsewhere).
    """
    low = torch.clamp(box[:2].floor() - 1, min=0)
    high = box[2:].ceil() + 1
    rows = _pixels_between(low[1], high[1], height)
    cols = _pixels_between(low[0], high[0], width)
    img_y = (rows.float() + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    img_x = (cols.float() + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    grid_size = (rows.shape[0], cols.shape[0])
    grid = torch.stack([img_x[None, :].expand(grid_size), img_y[:, None].expand(grid_size)], 2)
    pasted = F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)
    return rows, cols, pasted[0, 0] >= threshold
