"""The compiled loops of :mod:`.png`: PNG row unfiltering and pixel counting (numba, GIL-free).

This module is imported by the first :func:`.png.joint_counts` or :func:`.png.decode_rgba` call,
not by ``import panoptic_fpn_ext``: numba is loaded and the loops are compiled only when a
panoptic PNG is first read.

Compiled code is cached on disk where numba finds a writable place: ``$NUMBA_CACHE_DIR`` if set,
else the package's ``__pycache__``, else the user's cache folder (``~/.cache/numba``). Where none
is writable (a read-only install run by a user without a writable home), the loops are compiled
in each process instead (a few seconds, once per process) and the reason is logged.
"""

import logging
from typing import Callable

import numba
import numpy as np

__all__ = ["OUT_OF_RANGE", "unfilter_and_count", "unfilter_rgba"]

logger = logging.getLogger(__name__)

# PNG filter types: None, Sub, Up, Average, Paeth.
_NONE, _SUB, _UP, _AVERAGE = 0, 1, 2, 3
# What unfilter_and_count returns for a row or column out of the histogram.
OUT_OF_RANGE = -2


def _compiled(function: Callable) -> Callable:
    """``numba.njit(nogil=True)``, cached on disk when numba has a writable cache location."""
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError as e:  # numba: "cannot cache function ...: no locator available ..."
        if "no locator available" not in str(e):
            raise
        logger.info(
            "No writable cache for numba (%s); the PNG loops are compiled in this process. "
            "Set NUMBA_CACHE_DIR to a writable folder to keep them.",
            e,
        )
        return numba.njit(nogil=True)(function)


@_compiled
def _paeth(left: int, up: int, up_left: int) -> int:
    """The PNG Paeth predictor of one byte."""
    to_left, to_up = abs(up - up_left), abs(left - up_left)
    to_up_left = abs(left + up - 2 * up_left)
    if to_left <= to_up and to_left <= to_up_left:
        return left
    return up if to_up <= to_up_left else up_left


@_compiled
def _unfilter_row(data, start, channels, row, previous) -> bool:
    """Undo the filter of one row: ``data[start]`` is its filter type, the next ``len(row)``
    bytes its filtered bytes; ``previous`` is the row above, unfiltered (zeros for the first).
    Fills ``row`` (uint8); False for an unknown filter type."""
    kind, filtered = data[start], data[start + 1 : start + 1 + len(row)]
    if kind == _NONE:
        row[:] = filtered
    elif kind == _UP:
        for i in range(len(row)):
            row[i] = filtered[i] + previous[i]
    elif kind > 4:
        return False
    else:
        for i in range(channels):  # the first pixel: its left and upper-left bytes are 0
            up = np.int32(previous[i])
            row[i] = filtered[i] + (0 if kind == _SUB else up >> 1 if kind == _AVERAGE else up)
        for i in range(channels, len(row)):
            left = np.int32(row[i - channels])
            if kind == _SUB:
                predicted = left
            elif kind == _AVERAGE:
                predicted = (left + previous[i]) >> 1
            elif previous[i] == previous[i - channels]:
                predicted = left  # Paeth, where the two bytes above are equal (the common case)
            else:
                predicted = _paeth(left, np.int32(previous[i]), np.int32(previous[i - channels]))
            row[i] = filtered[i] + predicted
    return True


@_compiled
def unfilter_and_count(
    data, height, width, channels, row_of_id, num_rows, columns, num_columns, counts
):
    """See :func:`.png.joint_counts`; returns -1, the first row with an unknown filter type, or
    OUT_OF_RANGE."""
    rows = np.zeros((2, width * channels), dtype=np.uint8)
    key, run = 0, 0  # pixels are counted in runs of one key
    for y in range(height):
        row, previous = rows[y % 2], rows[1 - y % 2]
        if not _unfilter_row(data, y * (1 + width * channels), channels, row, previous):
            return y
        last_id, base = -1, 0
        for x in range(width):
            j = x * channels
            segment_id = np.int64(row[j]) | np.int64(row[j + 1]) << 8 | np.int64(row[j + 2]) << 16
            if segment_id != last_id:
                if row_of_id[segment_id] >= num_rows:
                    return OUT_OF_RANGE
                last_id, base = segment_id, np.int64(row_of_id[segment_id]) * num_columns
            column = np.int64(columns[y * width + x])
            if column < 0 or column >= num_columns:
                return OUT_OF_RANGE
            if base + column != key:
                counts[key] += run
                key, run = base + column, 0
            run += 1
    counts[key] += run
    return -1


@_compiled
def unfilter_rgba(data, height, width, channels, words):
    """See :func:`.png.decode_rgba`; ``words`` is its output as uint32 (H, W). Returns -1, or the
    first row with an unknown filter type."""
    rows = np.zeros((2, width * channels), dtype=np.uint8)
    for y in range(height):
        row, previous = rows[y % 2], rows[1 - y % 2]
        if not _unfilter_row(data, y * (1 + width * channels), channels, row, previous):
            return y
        for x in range(width):
            j = x * channels
            words[y, x] = (
                np.uint32(row[j]) | np.uint32(row[j + 1]) << 8 | np.uint32(row[j + 2]) << 16
            ) | np.uint32(0xFF000000)
    return -1
