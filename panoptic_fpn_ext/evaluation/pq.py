"""Panoptic quality (PQ): per-image statistics on tensors, per-category accumulation, metrics.

The definition is the reference one (Kirillov et al., "Panoptic Segmentation", CVPR 2019), as
implemented by panopticapi's ``pq_compute`` and cityscapesscripts' ``evalPanopticSemanticLabeling``
(the same algorithm), rule for rule:

* a ground-truth (GT) and a predicted segment match when they have the same category and
  IoU > 0.5, where the union leaves out the predicted segment's pixels on GT void;
  a match is a true positive (TP) and adds its IoU to its category's IoU sum;
* an unmatched, non-crowd GT segment is a false negative (FN); crowd GT segments never match and
  are never FN;
* an unmatched predicted segment is a false positive (FP) unless more than half of its pixels lie
  on GT void plus the crowd segment of its own category. When an image has several crowd segments
  of one category, that is the last of them in the GT's ``segments_info`` order, as in the
  reference;
* per category ``PQ = IoU sum / (TP + FP/2 + FN/2)``, ``SQ = IoU sum / TP`` (0 without TP),
  ``RQ = TP / (TP + FP/2 + FN/2)``; the All/Things/Stuff figures are means over the categories
  that have at least one GT or predicted segment (TP + FP + FN > 0).

Since IoU > 0.5 pairs are unique on both sides, every statistic of an image follows from one joint
histogram of (GT segment, predicted segment) pixel counts. This module holds the rules, applied to
that histogram; the histogram is counted in :mod:`.counting` (ids to indices: :mod:`.id_index`),
the segments are validated in :mod:`.segments`.

Categories: the plugin's contiguous ids are per kind (things 0..T-1; stuff 1..S, 0 being the
semantic "things" label). Here both kinds share one axis, the *category index*: thing ``c`` is
``c``, stuff ``s`` is ``T + s - 1``; ``C = T + S``.
"""

from dataclasses import dataclass
from typing import Dict, Union

import numpy as np
import torch

from .counting import image_joint_histogram
from .id_index import GroundTruth
from .segments import (
    PanopticPredictionError,
    Segments,
    check_segment_ids,
    host_array,
    segments_from_info,
)

__all__ = [
    "PQStatistics",
    "PanopticPredictionError",
    "Segments",
    "image_pq_statistics",
    "image_statistics",
    "pq_per_category",
    "pq_summary",
    "segments_from_info",
]


@dataclass
class PQStatistics:
    """Per-category PQ counts, summed over images.

    Attributes:
        tp, fp, fn: int64 (C,), numbers of true positives, false positives, false negatives.
        iou_sum: float64 (C,), sum of the IoUs of the true positives.
    """

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    iou_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_categories: int, device: torch.device = "cpu") -> "PQStatistics":
        """Statistics of no image."""
        count = torch.zeros(num_categories, dtype=torch.int64, device=device)
        return cls(count, count.clone(), count.clone(), count.to(torch.float64))

    def __add__(self, other: "PQStatistics") -> "PQStatistics":
        """Statistics of the images of both (same device)."""
        return PQStatistics(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou_sum + other.iou_sum,
        )

    def add_(self, other: "PQStatistics") -> "PQStatistics":
        """Add the statistics of ``other`` to these, in place (CPU tensors; numpy adds, whose
        per-call cost is a fraction of torch's); returns self."""
        for total, value in zip(
            (self.tp, self.fp, self.fn, self.iou_sum),
            (other.tp, other.fp, other.fn, other.iou_sum),
        ):
            array = total.numpy()
            np.add(array, value.numpy(), out=array)
        return self

    def cpu(self) -> "PQStatistics":
        """The same statistics on the CPU."""
        return PQStatistics(self.tp.cpu(), self.fp.cpu(), self.fn.cpu(), self.iou_sum.cpu())


def image_statistics(
    histogram: Union[torch.Tensor, np.ndarray], gt: Segments, pred: Segments, num_categories: int
) -> PQStatistics:
    """PQ statistics of one image from its joint histogram.

    The rules run on the CPU, in numpy: a few operations on (Kg, Kp) matrices, where numpy's
    per-operation cost is well below torch's.

    Args:
        histogram: int64 (Kg + 2, Kp + 2), the joint histogram (see :mod:`.counting`), checked by
            :func:`check_segment_ids` (every listed segment has pixels, no unknown ids); a tensor
            on any device, or its values as a numpy array.
        gt, pred: the segments behind the histogram's rows and columns (any device).
        num_categories: C.
    Returns:
        this image's statistics, on the CPU.
    """
    num_gt, num_pred = len(gt.ids), len(pred.ids)
    gt_categories, gt_crowd = gt.categories.cpu().numpy(), gt.iscrowd.cpu().numpy()
    pred_categories = pred.categories.cpu().numpy()
    counts = host_array(histogram)[: num_gt + 1, : num_pred + 1]
    gt_area = counts[1:].sum(1)  # (Kg,)
    pred_area = counts[:, 1:].sum(0)  # (Kp,)
    pred_on_void = counts[0, 1:]  # (Kp,) pixels of each predicted segment on GT void
    intersection = counts[1:, 1:]  # (Kg, Kp)
    union = pred_area + gt_area[:, None] - intersection - pred_on_void  # >= gt_area > 0
    same_category = gt_categories[:, None] == pred_categories
    matched = same_category & ~gt_crowd[:, None] & (2 * intersection > union)
    iou = np.where(matched, intersection / union, 0.0)  # float64
    gt_matched, pred_matched = matched.any(1), matched.any(0)

    # Index of the last crowd GT segment of each category; num_gt (a zero row below) when none.
    crowd = np.flatnonzero(gt_crowd)
    last_crowd = np.full(num_categories, -1, dtype=np.int64)
    np.maximum.at(last_crowd, gt_categories[crowd], crowd)
    last_crowd[last_crowd < 0] = num_gt
    with_zero_row = np.concatenate([intersection, np.zeros((1, num_pred), intersection.dtype)])
    on_crowd = with_zero_row[last_crowd[pred_categories], np.arange(num_pred)]
    ignored = 2 * (pred_on_void + on_crowd) > pred_area

    def per_category(categories: np.ndarray, values: np.ndarray) -> torch.Tensor:
        total = np.bincount(categories, weights=values, minlength=num_categories)
        return torch.from_numpy(total if values.dtype == np.float64 else total.astype(np.int64))

    return PQStatistics(
        tp=per_category(gt_categories, gt_matched),
        fp=per_category(pred_categories, ~pred_matched & ~ignored),
        fn=per_category(gt_categories, ~gt_matched & ~gt_crowd),
        iou_sum=per_category(gt_categories, iou.sum(1)),
    )


def _integer_id_map(id_map: torch.Tensor, describe: str) -> torch.Tensor:
    if id_map.dtype.is_floating_point or id_map.dtype.is_complex or id_map.dtype == torch.bool:
        raise PanopticPredictionError(
            f"{describe}: the id map has dtype {id_map.dtype}; expected an integer tensor"
        )
    return id_map if id_map.dtype in (torch.int32, torch.int64) else id_map.to(torch.int32)


def image_pq_statistics(
    gt_id_map: GroundTruth,
    gt: Segments,
    pred_id_map: torch.Tensor,
    pred: Segments,
    num_categories: int,
    describe: str,
) -> PQStatistics:
    """PQ statistics of one image, on the CPU.

    The pixels are counted into one joint histogram of (GT segment, predicted segment) pixel
    counts (:func:`.counting.image_joint_histogram`: on the CPU, in compiled code that releases
    the GIL, through one table of all 24-bit ids per side, as a GT PNG is unfiltered row by row;
    on another device, by torch); the rules then only read that histogram.

    Args:
        gt_id_map: the GT segment id per pixel (0 = void): an integer tensor (H, W), moved to
            ``pred_id_map``'s device; or the COCO-panoptic PNG's pixels as a uint8 RGBA numpy
            array (H, W, 4), C-contiguous, ``id = R + 256 G + 256² B`` (alpha ignored); or
            that PNG, inflated but not unfiltered (:class:`.png.FilteredPng`; fastest with
            predictions on the CPU).
        gt: the GT segments.
        pred_id_map: integer (H, W), predicted segment id per pixel (0 = void).
        pred: the predicted segments.
        num_categories: C.
        describe: names the image in error messages.
    Raises:
        PanopticPredictionError: the prediction's size differs from the GT's, its dtype is not an
            integer one, or its map and segments_info disagree.
        PanopticDataError: the GT map and its segments_info disagree.
    """
    gt_shape = tuple(gt_id_map.shape[:2])
    if tuple(pred_id_map.shape) != gt_shape:
        raise PanopticPredictionError(
            f"{describe}: the prediction is {tuple(pred_id_map.shape)} (HxW), the ground truth "
            f"{gt_shape}; predictions must be at the image's original size"
        )
    pred_id_map = _integer_id_map(pred_id_map, describe)
    histogram = image_joint_histogram(gt_id_map, gt.ids, pred_id_map, pred.ids)
    check_segment_ids(histogram, gt_id_map, gt.ids, pred_id_map, pred.ids, describe)
    return image_statistics(histogram, gt, pred, num_categories)


def pq_per_category(statistics: PQStatistics) -> Dict[str, np.ndarray]:
    """PQ, SQ, RQ of every category.

    Returns:
        "pq", "sq", "rq": float64 (C,) fractions in [0, 1], NaN for categories with no GT and
        no predicted segment; "counted": bool (C,), the categories that have some.
    """
    tp, fp, fn = (
        x.cpu().numpy().astype(np.float64) for x in (statistics.tp, statistics.fp, statistics.fn)
    )
    iou_sum = statistics.iou_sum.cpu().numpy()
    counted = tp + fp + fn > 0
    denominator = np.where(counted, tp + 0.5 * fp + 0.5 * fn, 1.0)
    sq = np.divide(iou_sum, tp, out=np.zeros_like(iou_sum), where=tp > 0)
    return {
        "pq": np.where(counted, iou_sum / denominator, np.nan),
        "sq": np.where(counted, sq, np.nan),
        "rq": np.where(counted, tp / denominator, np.nan),
        "counted": counted,
    }


def pq_summary(statistics: PQStatistics, isthing: np.ndarray) -> Dict[str, Dict[str, float]]:
    """PQ, SQ, RQ of all categories, of things and of stuff.

    Args:
        statistics: the accumulated statistics.
        isthing: bool (C,), which categories are things.
    Returns:
        {"All" | "Things" | "Stuff": {"pq", "sq", "rq": mean over the group's counted categories
        (fractions in [0, 1]), "n": number of counted categories}}; the means are NaN when the
        group has no counted category (the reference divides by zero there).
    """
    per_category = pq_per_category(statistics)
    summary = {}
    for name, group in (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing)):
        members = group & per_category["counted"]
        n = int(members.sum())
        summary[name] = {
            key: float(per_category[key][members].mean()) if n else float("nan")
            for key in ("pq", "sq", "rq")
        }
        summary[name]["n"] = n
    return summary
