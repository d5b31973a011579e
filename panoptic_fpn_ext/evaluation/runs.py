"""Counting a row of (GT id, predicted id) pixel pairs into a joint histogram, by runs.

Both of a row's id sequences are piecewise constant: a pair of ids changes at a few boundaries
per row. The boundaries are found by comparing each pixel with the one before it, in a loop that
compiles to vector instructions; only then, at each boundary, are the new ids looked up (in the
image's id tables, :mod:`.id_table`) and the run that ends there counted. The cost per pixel is
that of the comparison, whatever the ids' values; the cost per boundary is one or two table
look-ups.
"""

import numpy as np

from .id_table import find_index
from .jit import jit

__all__ = ["boundary_buffer", "count_row"]


@jit
def boundary_buffer(width):
    """Scratch space for :func:`count_row` on rows of up to ``width`` pixels: uint64 words, one
    byte per pixel."""
    return np.zeros((width + 7) // 8 + 1, dtype=np.uint64)


@jit
def count_row(gt_row, pred_row, gt_mask, gt_table, pred_table, counts, boundaries):
    """Add each pixel's pair (GT index, predicted index) of one row to ``counts``.

    Args:
        gt_row, pred_row: integer (W,) ids; a GT id is ``gt_row[x] & gt_mask``.
        gt_table, pred_table: (keys, indices, shift, missing) of :func:`.id_table.build_id_table`
            and the index of ids not listed.
        counts: int64 ((Kg + 2) * (Kp + 2),), entry ``g * (Kp + 2) + p`` for indices g, p.
        boundaries: from :func:`boundary_buffer` for W or more pixels.
    """
    width = gt_row.shape[0]
    if width == 0:
        return
    flags = boundaries.view(np.uint8)
    flags[0] = 0
    for x in range(1, width):
        flags[x] = (gt_row[x] != gt_row[x - 1]) | (pred_row[x] != pred_row[x - 1])
    flags[width : width + 8] = 0  # the last word's bytes past the row
    num_columns = pred_table[3] + 1
    last_gt, last_pred = np.int64(gt_row[0]) & gt_mask, np.int64(pred_row[0])
    row = find_index(gt_table[0], gt_table[1], gt_table[2], last_gt, gt_table[3])
    column = find_index(pred_table[0], pred_table[1], pred_table[2], last_pred, pred_table[3])
    start = 0
    for w in range((width + 7) // 8):
        if boundaries[w] == 0:
            continue
        for x in range(8 * w, 8 * w + 8):
            if flags[x] == 0:
                continue
            counts[row * num_columns + column] += x - start
            start = x
            gt_id, pred_id = np.int64(gt_row[x]) & gt_mask, np.int64(pred_row[x])
            if gt_id != last_gt:
                row = find_index(gt_table[0], gt_table[1], gt_table[2], gt_id, gt_table[3])
                last_gt = gt_id
            if pred_id != last_pred:
                column = find_index(
                    pred_table[0], pred_table[1], pred_table[2], pred_id, pred_table[3]
                )
                last_pred = pred_id
    counts[row * num_columns + column] += width - start
