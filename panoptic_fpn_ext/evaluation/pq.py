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
that histogram; the histogram is counted in :mod:`.counting` (ids to indices: :mod:`.id_table` on
the CPU, :mod:`.id_index` on other devices), the segments are validated in :mod:`.segments`.

Categories: the plugin's contiguous ids are per kind (things 0..T-1; stuff 1..S, 0 being the
semantic "things" label). Here both kinds share one axis, the *category index*: thing ``c`` is
``c``, stuff ``s`` is ``T + s - 1``; ``C = T + S``.
"""

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from .counting import image_joint_histogram
from .id_index import GroundTruth
from .jit import jit
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
    "pq_results",
    "pq_summary",
    "segments_from_info",
]


@dataclass
class PQStatistics:
    """Per-category PQ counts, summed over images (numpy arrays, on the host).

    Attributes:
        tp, fp, fn: int64 (C,), numbers of true positives, false positives, false negatives.
        iou_sum: float64 (C,), sum of the IoUs of the true positives.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou_sum: np.ndarray

    @classmethod
    def zeros(cls, num_categories: int) -> "PQStatistics":
        """Statistics of no image."""
        tp, fp, fn = np.zeros((3, num_categories), dtype=np.int64)
        return cls(tp, fp, fn, np.zeros(num_categories))

    def __add__(self, other: "PQStatistics") -> "PQStatistics":
        """Statistics of the images of both."""
        return PQStatistics(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou_sum + other.iou_sum,
        )

    def add_(self, other: "PQStatistics") -> "PQStatistics":
        """Add the statistics of ``other`` to these, in place; returns self."""
        for total, value in zip(
            (self.tp, self.fp, self.fn, self.iou_sum),
            (other.tp, other.fp, other.fn, other.iou_sum),
        ):
            np.add(total, value, out=total)
        return self


@jit
def _ids_agree(counts):
    """Whether a joint histogram (int64 (Kg + 2, Kp + 2)) has no pixel of an unlisted id (last
    row and column) and a pixel for every listed segment (see :func:`.check_segment_ids`)."""
    last_row, last_column = counts.shape[0] - 1, counts.shape[1] - 1
    agree = True
    for g in range(last_row + 1):
        agree &= counts[g, last_column] == 0
    for p in range(last_column + 1):
        agree &= counts[last_row, p] == 0
    for g in range(1, last_row):
        agree &= counts[g].sum() > 0
    for p in range(1, last_column):
        agree &= counts[:, p].sum() > 0
    return agree


@jit(release_gil=False)
def _add_image_counts(counts, gt_categories, gt_crowd, pred_categories, tp, fp, fn, iou_sum):
    """The rules above, on one image's joint histogram ``counts`` (int64 (Kg + 2, Kp + 2): row
    and column 0 void, then the segments); adds its TP, FP, FN and IoU sums to the (C,) arrays.
    Returns :func:`_ids_agree` of ``counts`` (the statistics are meaningless without)."""
    if not _ids_agree(counts):
        return False
    num_gt, num_pred = len(gt_categories), len(pred_categories)
    gt_area, pred_area = np.zeros(num_gt, np.int64), np.zeros(num_pred, np.int64)
    for g in range(num_gt):
        for p in range(num_pred + 1):
            gt_area[g] += counts[g + 1, p]
    for p in range(num_pred):
        for g in range(num_gt + 1):
            pred_area[p] += counts[g, p + 1]
    gt_matched, pred_matched = np.zeros(num_gt, np.bool_), np.zeros(num_pred, np.bool_)
    for g in range(num_gt):
        for p in range(num_pred):
            if gt_crowd[g] or gt_categories[g] != pred_categories[p]:
                continue
            intersection = counts[g + 1, p + 1]
            # The union leaves out the predicted pixels on GT void.
            union = gt_area[g] + pred_area[p] - intersection - counts[0, p + 1]
            if 2 * intersection > union:  # IoU > 0.5: a match, unique on both sides
                gt_matched[g], pred_matched[p] = True, True
                tp[gt_categories[g]] += 1
                iou_sum[gt_categories[g]] += intersection / union
    last_crowd = np.full(len(tp), -1, np.int64)  # the last crowd GT segment of each category
    for g in range(num_gt):
        if gt_crowd[g]:
            last_crowd[gt_categories[g]] = g
        elif not gt_matched[g]:
            fn[gt_categories[g]] += 1
    for p in range(num_pred):
        crowd = last_crowd[pred_categories[p]]
        ignored = counts[0, p + 1] + (counts[crowd + 1, p + 1] if crowd >= 0 else 0)
        if not pred_matched[p] and 2 * ignored <= pred_area[p]:
            fp[pred_categories[p]] += 1
    return True


def image_statistics(
    histogram: Union[torch.Tensor, np.ndarray], gt: Segments, pred: Segments, num_categories: int
) -> Tuple[PQStatistics, bool]:
    """PQ statistics of one image from its joint histogram (compiled code:
    :func:`_add_image_counts`), and whether the histogram agrees with the segments.

    Args:
        histogram: int64 (Kg + 2, Kp + 2), the joint histogram (see :mod:`.counting`); a tensor
            on any device, or its values as a numpy array.
        gt, pred: the segments behind the histogram's rows and columns (any device).
        num_categories: C.
    Returns:
        this image's statistics, on the CPU; and False when the histogram fails
        :func:`check_segment_ids` (a pixel of an unlisted id, or a listed segment without
        pixels), the statistics then being meaningless.
    """
    statistics = PQStatistics.zeros(num_categories)
    ids_agree = _add_image_counts(
        np.ascontiguousarray(host_array(histogram)),
        gt.categories.cpu().numpy(),
        gt.iscrowd.cpu().numpy(),
        pred.categories.cpu().numpy(),
        statistics.tp,
        statistics.fp,
        statistics.fn,
        statistics.iou_sum,
    )
    return statistics, ids_agree


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
    statistics, ids_agree = image_statistics(histogram, gt, pred, num_categories)
    if not ids_agree:
        check_segment_ids(histogram, gt_id_map, gt.ids, pred_id_map, pred.ids, describe)
    return statistics


def pq_per_category(statistics: PQStatistics) -> Dict[str, np.ndarray]:
    """PQ, SQ, RQ of every category.

    Returns:
        "pq", "sq", "rq": float64 (C,) fractions in [0, 1], NaN for categories with no GT and
        no predicted segment; "counted": bool (C,), the categories that have some.
    """
    tp, fp, fn = (x.astype(np.float64) for x in (statistics.tp, statistics.fp, statistics.fn))
    iou_sum = statistics.iou_sum
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


def pq_results(
    statistics: PQStatistics, isthing: np.ndarray, class_names: Sequence[str]
) -> Dict[str, float]:
    """The PQ evaluator's results, in percent: "PQ", "SQ", "RQ", the same with "_th" (things)
    and "_st" (stuff), and "PQ_<class>", "SQ_<class>", "RQ_<class>" of every class (NaN for a
    class with no segment).

    Args:
        statistics: the accumulated statistics.
        isthing: bool (C,), which categories are things.
        class_names: C names, in category-index order.
    """
    summary = pq_summary(statistics, isthing)
    per_category = pq_per_category(statistics)
    results = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            results[f"{metric.upper()}{suffix}"] = 100 * summary[group][metric]
    for metric in ("pq", "sq", "rq"):
        for name, value in zip(class_names, per_category[metric]):
            results[f"{metric.upper()}_{name}"] = 100 * float(value)
    return results
