"""Segment id to segment index, in compiled code: a small hash table per image and side.

The kernels that count a joint histogram (:mod:`.png`, :mod:`.counting`) look an id up only where
it differs from the previous pixel's, in a table built for the image's own ids: open addressing
with linear probing, Fibonacci hashing of the id, at most a quarter full. Its cost depends on the
number of segments, not on the ids' values (1..K or any 24-bit ones), and it holds no memory
between images.
"""

import numpy as np

from .jit import jit

__all__ = ["build_id_table", "find_index", "lookup_table"]

# 2^64 / golden ratio: Fibonacci hashing spreads consecutive and random ids alike.
_GOLDEN = np.uint64(11400714819323198485)


@jit
def build_id_table(segment_ids):
    """A table of void and the listed ids (see :func:`find_index`).

    Args:
        segment_ids: int64 (K,), distinct ids, none of them 0.
    Returns:
        (keys, indices, shift): keys int64 (S,), indices int64 (S,) (-1 for an empty slot),
        S a power of 2 >= 4 (K + 1); void has index 0, ``segment_ids[k]`` index ``k + 1``.
    """
    bits = 2
    while (1 << bits) < 4 * (len(segment_ids) + 1):
        bits += 1
    keys = np.zeros(1 << bits, dtype=np.int64)
    indices = np.full(1 << bits, -1, dtype=np.int64)
    shift = np.uint64(64 - bits)
    for index in range(len(segment_ids) + 1):
        segment_id = np.int64(0) if index == 0 else np.int64(segment_ids[index - 1])
        slot = (np.uint64(segment_id) * _GOLDEN) >> shift
        while indices[slot] >= 0:
            slot = (slot + np.uint64(1)) & np.uint64(len(keys) - 1)
        keys[slot], indices[slot] = segment_id, index
    return keys, indices, shift


@jit
def find_index(keys, indices, shift, segment_id, missing):
    """The index of ``segment_id`` (any int64) in a table of :func:`build_id_table`: 0 for void,
    ``k + 1`` for ``segment_ids[k]``, ``missing`` for an id not in the table."""
    slot = (np.uint64(segment_id) * _GOLDEN) >> shift
    while indices[slot] >= 0:
        if keys[slot] == segment_id:
            return indices[slot]
        slot = (slot + np.uint64(1)) & np.uint64(len(keys) - 1)
    return missing


@jit
def lookup_table(segment_ids):
    """:func:`build_id_table` of ``segment_ids`` and the index of ids not listed, as one tuple
    (keys, indices, shift, missing), the form :func:`.runs.count_row` takes."""
    return (*build_id_table(segment_ids), len(segment_ids) + 1)
