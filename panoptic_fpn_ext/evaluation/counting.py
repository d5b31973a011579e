"""The joint histogram of an image: pixel counts of every (GT segment, predicted segment) pair.

Every PQ statistic of an image follows from this histogram (see :mod:`.pq`). On the CPU it is
counted in one pass over the pixels by compiled code that releases the GIL (numba, see
:mod:`.jit`), so that the evaluator's threads count in parallel: each pixel's GT id and predicted
id are looked up in the thread's two id tables (:class:`.id_index.IdTables`), one load per side
whatever the ids' values (1..K or any 24-bit ones), and consecutive pixels of one pair are counted
as one run. A GT PNG is counted as it is unfiltered, row by row (:func:`.png.joint_counts`); a GT
id map or RGBA pixels by :func:`_count_id_pairs`. Predictions on another device, and images with
too many pairs of segments for the CPU route (see :data:`MAX_BINS`), are counted by torch from
index maps (:func:`.id_index.segment_index_map`, :func:`.id_index.joint_histogram`).
"""

from typing import Optional

import numpy as np
import torch

from .id_index import (
    MAX_SEGMENT_ID,
    GroundTruth,
    IdTables,
    ground_truth_ids,
    id_tables,
    joint_histogram,
    rgba_ids,
    segment_index_map,
)
from .jit import jit
from .png import FilteredPng, joint_counts

__all__ = ["MAX_BINS", "cpu_joint_histogram", "image_joint_histogram"]

# The CPU route counts into (Kg + 2) x (Kp + 2) int64 bins per thread: at most this many (32 MiB).
MAX_BINS = 1 << 22


@jit
def _row_base(value, is_rgba, row_of_id, num_columns):
    """``row * num_columns`` of a GT id map value: the low 24 bits of an RGBA word, or the id."""
    segment_id = value & MAX_SEGMENT_ID if is_rgba else value
    if 0 <= segment_id <= MAX_SEGMENT_ID:
        return np.int64(row_of_id[segment_id]) * num_columns
    return np.int64(0)


@jit
def _column(pred_id, column_of_id):
    """The column of a predicted id; 0 (unlisted) outside [0, MAX_SEGMENT_ID]."""
    if 0 <= pred_id <= MAX_SEGMENT_ID:
        return np.int64(column_of_id[pred_id])
    return np.int64(0)


@jit
def _count_id_pairs(gt_values, is_rgba, pred_ids, row_of_id, column_of_id, num_columns, counts):
    """Add 1 to ``counts[row * num_columns + column]`` for each pixel (see :func:`_row_base` and
    :func:`_column`); the arrays are (H * W,), ``counts`` int64 (rows * num_columns,)."""
    if len(gt_values) == 0:
        return
    last_gt, last_pred = np.int64(gt_values[0]), np.int64(pred_ids[0])
    base = _row_base(last_gt, is_rgba, row_of_id, num_columns)
    column = _column(last_pred, column_of_id)
    key, run = base + column, 0  # pixels are counted in runs of one key
    for i in range(len(gt_values)):
        gt_value, pred_id = np.int64(gt_values[i]), np.int64(pred_ids[i])
        if gt_value != last_gt:
            last_gt, base = gt_value, _row_base(gt_value, is_rgba, row_of_id, num_columns)
        if pred_id != last_pred:
            last_pred, column = pred_id, _column(pred_id, column_of_id)
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
    through the thread's id tables, without index maps.

    Args:
        gt_id_map: the GT, on the CPU (see :data:`.id_index.GroundTruth`).
        gt_ids, pred_ids: int64 (Kg,), (Kp,), the ids of each side's segments_info.
        pred_id_map: int32 or int64 (H, W), on the CPU.
    Returns:
        int64 (Kg + 2, Kp + 2), as :func:`.id_index.joint_histogram`; None when a side has more
        than ``IdTables.MAX_SEGMENTS`` segments or the histogram more than MAX_BINS entries.
    """
    num_rows, num_columns = len(gt_ids) + 2, len(pred_ids) + 2
    if max(num_rows, num_columns) - 2 > IdTables.MAX_SEGMENTS or num_rows * num_columns > MAX_BINS:
        return None
    pred_flat = pred_id_map.reshape(-1).numpy()
    with id_tables.filled(gt_ids.numpy(), pred_ids.numpy()) as (row_of_id, column_of_id):
        if isinstance(gt_id_map, FilteredPng):
            counts = joint_counts(
                gt_id_map, row_of_id, num_rows, pred_flat, column_of_id, num_columns
            )
        else:
            counts = np.zeros(num_rows * num_columns, dtype=np.int64)
            is_rgba = not isinstance(gt_id_map, torch.Tensor)
            gt_values = rgba_ids(gt_id_map) if is_rgba else gt_id_map.numpy()
            _count_id_pairs(
                gt_values.reshape(-1),
                is_rgba,
                pred_flat,
                row_of_id,
                column_of_id,
                num_columns,
                counts,
            )
    # The tables' rows and columns are: unlisted ids, void, the listed ids; the histogram's are
    # void, the listed ids, unlisted ids.
    return np.roll(counts.reshape(num_rows, num_columns), (-1, -1), axis=(0, 1))


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
