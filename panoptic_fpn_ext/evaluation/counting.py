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
from .id_table import build_id_table, find_index
from .jit import jit
from .png import FilteredPng, joint_counts

__all__ = ["MAX_BINS", "cpu_joint_histogram", "image_joint_histogram"]

# The CPU route counts into (Kg + 2) x (Kp + 2) int64 bins per thread: at most this many (32 MiB).
MAX_BINS = 1 << 22
# Unsigned constants for the kernel's indices (an int64 would turn uint64 arithmetic to float).
_U0 = np.uint64(0)


@jit
def _count_id_pairs(gt_values, is_rgba, pred_map, gt_ids, pred_ids, counts):
    """See :func:`cpu_joint_histogram`: ``gt_values`` and ``pred_map`` are (H * W,), an RGBA
    word's id its low 24 bits; ``counts`` is int64 ((Kg + 2) * (Kp + 2),). Indices are uint64
    (see :func:`.png._unfilter_ids`)."""
    gt_keys, gt_indices, gt_shift = build_id_table(gt_ids)
    pred_keys, pred_indices, pred_shift = build_id_table(pred_ids)
    gt_unlisted, pred_unlisted = len(gt_ids) + 1, len(pred_ids) + 1
    num_columns = np.uint64(len(pred_ids) + 2)
    last_gt, base, last_pred, column = np.int64(0), _U0, np.int64(0), _U0  # void, void
    key, run = _U0, 0  # pixels are counted in runs of one key
    for i in range(np.uint64(len(gt_values))):
        gt_value, pred_id = np.int64(gt_values[i]), np.int64(pred_map[i])
        if is_rgba:
            gt_value &= MAX_SEGMENT_ID
        if gt_value != last_gt:
            row = find_index(gt_keys, gt_indices, gt_shift, gt_value, gt_unlisted)
            last_gt, base = gt_value, np.uint64(row) * num_columns
        if pred_id != last_pred:
            index = find_index(pred_keys, pred_indices, pred_shift, pred_id, pred_unlisted)
            last_pred, column = pred_id, np.uint64(index)
        if base + column != key:
            counts[key] += run
            key, run = base + column, 0
        run += 1
    counts[key] += run


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
    pred_map = pred_id_map.reshape(-1).numpy()
    if isinstance(gt_id_map, FilteredPng):
        return joint_counts(gt_id_map, gt_ids, pred_map, pred_ids)
    counts = np.zeros((len(gt_ids) + 2) * (len(pred_ids) + 2), dtype=np.int64)
    is_rgba = not isinstance(gt_id_map, torch.Tensor)
    gt_values = rgba_ids(gt_id_map) if is_rgba else gt_id_map.numpy()
    _count_id_pairs(gt_values.reshape(-1), is_rgba, pred_map, gt_ids, pred_ids, counts)
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
