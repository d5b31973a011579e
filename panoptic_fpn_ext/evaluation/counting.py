"""The joint histogram of an image: pixel counts of every (GT segment, predicted segment) pair.

Every PQ statistic of an image follows from this histogram (see :mod:`.pq`). On the CPU it is
counted in one pass over the pixels by compiled code that releases the GIL (numba, see :mod:`.jit`),
so that the evaluator's threads count in parallel: a GT id and a predicted id are looked up in a
small hash table of the image's ids (:mod:`.id_table`) only where they differ from the previous
pixel's, whatever their values (1..K or any 24-bit ones), and consecutive pixels of one pair are
counted as one run. A GT PNG is counted as it is unfiltered, row by row (:func:`.png.joint_counts`);
a GT id map or RGBA pixels by :func:`_count_id_pairs`. Predictions on another device, and images
with too many pairs of segments for the CPU route (see :data:`MAX_BINS`), are counted by torch from
index maps (:func:`.id_index.segment_index_map`, :func:`.id_index.joint_histogram`).
"""

from typing import Optional

import numpy as np
import torch

from .id_index import (
    MAX_SEGMENT_ID,
    GroundTruth,
    ground_truth_ids,
    joint_histogram,
    rgba_ids,
    segment_index_map,
)
from .id_table import lookup_table
from .jit import jit
from .png import FilteredPng, joint_counts
from .runs import boundary_buffer, count_row

__all__ = ["MAX_BINS", "cpu_joint_histogram", "image_joint_histogram"]

# The CPU route counts into (Kg + 2) x (Kp + 2) int64 bins per thread: at most this many (32 MiB).
MAX_BINS = 1 << 22


@jit
def _count_id_pairs(gt_values, gt_mask, pred_map, gt_ids, pred_ids, counts):
    """See :func:`cpu_joint_histogram`: ``gt_values`` and ``pred_map`` are (H, W), a GT id is
    ``gt_values & gt_mask``; ``counts`` is int64 ((Kg + 2) * (Kp + 2),)."""
    gt_table, pred_table = lookup_table(gt_ids), lookup_table(pred_ids)
    boundaries = boundary_buffer(gt_values.shape[1])
    for y in range(gt_values.shape[0]):
        count_row(gt_values[y], pred_map[y], gt_mask, gt_table, pred_table, counts, boundaries)


def cpu_joint_histogram(
    gt_id_map: GroundTruth,
    gt_ids: torch.Tensor,
    pred_id_map: torch.Tensor,
    pred_ids: torch.Tensor,
) -> Optional[np.ndarray]:
    """The :func:`.id_index.joint_histogram` of the two maps' segment indices, counted on the CPU
    in one pass over the pixels, without index maps.

    Args:
        gt_id_map: the GT, on the CPU (see :data:`.id_index.GroundTruth`).
        gt_ids, pred_ids: int64 (Kg,), (Kp,), the ids of each side's segments_info.
        pred_id_map: int32 or int64 (H, W), on the CPU.
    Returns:
        int64 (Kg + 2, Kp + 2), as :func:`.id_index.joint_histogram`; None when that has more
        than MAX_BINS entries.
    """
    gt_ids, pred_ids = gt_ids.numpy(), pred_ids.numpy()
    if (len(gt_ids) + 2) * (len(pred_ids) + 2) > MAX_BINS:
        return None
    if isinstance(gt_id_map, FilteredPng):
        return joint_counts(gt_id_map, gt_ids, pred_id_map.reshape(-1).numpy(), pred_ids)
    counts = np.zeros((len(gt_ids) + 2) * (len(pred_ids) + 2), dtype=np.int64)
    if isinstance(gt_id_map, torch.Tensor):
        gt_values, gt_mask = gt_id_map.numpy(), -1
    else:  # RGBA: the id is a word's low 24 bits
        gt_values, gt_mask = rgba_ids(gt_id_map), MAX_SEGMENT_ID
    pred_map = pred_id_map.numpy()
    _count_id_pairs(gt_values, np.int64(gt_mask), pred_map, gt_ids, pred_ids, counts)
    return counts.reshape(len(gt_ids) + 2, len(pred_ids) + 2)


def image_joint_histogram(
    gt_id_map: GroundTruth,
    gt_ids: torch.Tensor,
    pred_id_map: torch.Tensor,
    pred_ids: torch.Tensor,
) -> np.ndarray:
    """The joint histogram of one image, on the CPU route where it applies, otherwise by torch on
    the prediction's device.

    Args:
        gt_id_map: the GT (see :data:`.id_index.GroundTruth`); a tensor may be on any device.
        gt_ids, pred_ids: int64 (Kg,), (Kp,), on the CPU.
        pred_id_map: int32 or int64 (H, W), on any device.
    Returns:
        int64 (Kg + 2, Kp + 2) numpy array: entry [i, j] counts the pixels with GT index i and
        predicted index j; row/column 0 is void, the last row/column ids not listed.
    """
    gt_on_cpu = not isinstance(gt_id_map, torch.Tensor) or gt_id_map.device.type == "cpu"
    if gt_on_cpu and pred_id_map.device.type == "cpu":
        histogram = cpu_joint_histogram(gt_id_map, gt_ids, pred_id_map, pred_ids)
        if histogram is not None:
            return histogram
    gt_id_map = ground_truth_ids(gt_id_map).to(pred_id_map.device)
    gt_index = segment_index_map(gt_id_map, gt_ids)
    pred_index = segment_index_map(pred_id_map, pred_ids)
    return joint_histogram(gt_index, len(gt_ids), pred_index, len(pred_ids)).cpu().numpy()
