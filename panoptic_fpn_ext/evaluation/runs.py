"""Counting a row of (GT id, predicted id) pixel pairs into a joint histogram, by runs.

Both of a row's id sequences are piecewise constant: a pair of ids changes at a few boundaries
per row. The boundaries are found by comparing each pixel with the one before it, in a loop that
compiles to vector instructions, into one flag byte per pixel; the flags are then read a machine
word at a time, jumping from set flag to set flag. At each boundary the run that ends there is
counted and the new pair of ids looked up (in the image's id tables, :mod:`.id_table`), without
a branch on which side changed. The cost per pixel is that of the comparison, whatever the ids'
values; the cost per boundary is two table look-ups.
"""

import numpy as np

from .id_table import find_index
from .jit import jit

__all__ = ["boundary_buffer", "count_row"]

_ONE, _TOP_BYTE = np.uint64(1), np.uint64(56)
# Times 2^(8k) (a word whose only set bit is that of byte k), its top byte is k.
_BYTE_POSITION = np.uint64(0x0001020304050607)


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
        gt_table, pred_table: :func:`.id_table.lookup_table` of each side's ids.
        counts: int64 ((Kg + 2) * (Kp + 2),), entry ``g * (Kp + 2) + p`` for indices g, p.
        boundaries: from :func:`boundary_buffer` for W or more pixels.
    """
    width = gt_row.shape[0]
    if width == 0:
        return
    flags = boundaries.view(np.uint8)  # flags[x]: 1 where pixel x starts a run
    flags[0] = 0
    for x in range(1, width):
        flags[x] = (gt_row[x] != gt_row[x - 1]) | (pred_row[x] != pred_row[x - 1])
    flags[width : width + 8] = 0  # the last word's bytes past the row
    num_columns = pred_table[3] + 1
    start, row, column = 0, _gt_index(gt_row, 0, gt_mask, gt_table), _index(pred_row, 0, pred_table)
    for w in range((width + 7) // 8):
        word = boundaries[w]
        while word:  # each set flag byte of the word, lowest first
            lowest = word & (~word + _ONE)
            word ^= lowest
            x = 8 * w + np.int64((lowest * _BYTE_POSITION) >> _TOP_BYTE)
            counts[row * num_columns + column] += x - start
            start, row = x, _gt_index(gt_row, x, gt_mask, gt_table)
            column = _index(pred_row, x, pred_table)
    counts[row * num_columns + column] += width - start


@jit
def _index(ids, x, table):
    """The table's index of pixel ``x``'s id ``ids[x]``."""
    return find_index(table[0], table[1], table[2], np.int64(ids[x]), table[3])


@jit
def _gt_index(ids, x, mask, table):
    """The table's index of pixel ``x``'s GT id ``ids[x] & mask``."""
    return find_index(table[0], table[1], table[2], np.int64(ids[x]) & mask, table[3])
