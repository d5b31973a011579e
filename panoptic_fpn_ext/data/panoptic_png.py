"""A record's panoptic PNG as a map of segment indices, read and checked in one pass.

The PNG is read with the PQ evaluator's reader (:mod:`..evaluation.png`: ISA-L inflate, row
filters undone in compiled code); other PNG formats (palette, 16-bit, ...) go through PIL. Each
pixel's id is then looked up, where it differs from its left neighbour's, in a small hash table
of the record's ids (:mod:`..evaluation.id_table`), which gives its index and counts the pixels
of every id: the check that the PNG's ids are exactly the JSON's costs no more than the lookup.
"""

from typing import NamedTuple, Optional

import numpy as np
from detectron2.utils.file_io import PathManager

from ..evaluation.id_index import MAX_SEGMENT_ID, rgba_ids
from ..evaluation.id_table import build_id_table, find_index
from ..evaluation.jit import jit
from ..evaluation.png import decode_rgba, joint_counts, read_filtered_png
from .panoptic_io import (
    PanopticPNG,
    _check_png_segments,
    _check_png_size,
    _describe,
    read_image_file,
    rgb2id,
)

__all__ = ["SegmentIndices", "check_panoptic_png", "read_panoptic_png", "read_segment_indices"]


class SegmentIndices(NamedTuple):
    """A panoptic PNG as indices into its record's sorted segment ids.

    Attributes:
        segment_ids: int64 (K + 1,): 0 (void), then the ids of ``segments_info`` in ascending
            order; ``segment_ids[index_map]`` is the PNG's id map.
        index_map: (H, W), uint8 when K + 1 <= 255 (COCO and Cityscapes images), else int32.
        pixels: int64 (K + 1,), the number of pixels of each index (void may have none).
    """

    segment_ids: np.ndarray
    index_map: np.ndarray
    pixels: np.ndarray


@jit
def _index_pixels(words, id_mask, segment_ids, index_map, pixels):
    """``index_map[y, x]``: the index of id ``words[y, x] & id_mask`` (0 void, ``k + 1`` for
    ``segment_ids[k]``, ``K + 1`` for an id not listed); ``pixels[i]`` counts index i. An id is
    looked up only where the word differs from the previous pixel's."""
    keys, indices, shift = build_id_table(segment_ids)
    missing = len(segment_ids) + 1
    previous, index = words[0, 0] ^ 1, 0  # differs from the first word
    for y in range(words.shape[0]):
        for x in range(words.shape[1]):
            word = words[y, x]
            if word != previous:
                previous = word
                index = find_index(keys, indices, shift, np.int64(word & id_mask), missing)
            index_map[y, x] = index
            pixels[index] += 1


def _read_png(record: dict):
    """The record's panoptic PNG as the evaluator's reader gives it (None: a PNG format it does
    not read, for PIL).

    Raises:
        FileNotFoundError: the PNG does not exist.
        PanopticDataError (from the reader): the file cannot be decoded.
    """
    path = record["pan_seg_file_name"]
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Panoptic PNG {path} of {_describe(record)} does not exist")
    with PathManager.open(path, "rb") as f:
        return read_filtered_png(f.read(), path)


def _listed_ids(record: dict) -> np.ndarray:
    """int64: the ids of the record's ``segments_info``, sorted, each once."""
    return np.unique(np.array([s["id"] for s in record["segments_info"]], dtype=np.int64))


def _unknown_ids(words: np.ndarray, index_map: np.ndarray, missing: int) -> list:
    return np.unique(words[index_map == missing] & MAX_SEGMENT_ID).tolist()


def read_segment_indices(record: dict) -> SegmentIndices:
    """Read and check the panoptic PNG of a dataset record.

    Args:
        record: a dataset dict with "pan_seg_file_name", "segments_info", "height", "width",
            "image_id" and "file_name" (the format of the plugin's loaders).
    Returns:
        the PNG's segment indices; every non-void id of the PNG is in ``segments_info`` and
        every id of ``segments_info`` has a pixel.
    Raises:
        FileNotFoundError: the PNG does not exist.
        PanopticDataError: the PNG cannot be decoded, its size differs from the record's
            height/width, or its segment ids differ from those of ``segments_info``.
    """
    png = _read_png(record)
    if png is None:
        words = rgb2id(read_image_file(record["pan_seg_file_name"], "RGB")).astype(np.int32)
    else:
        words = rgba_ids(decode_rgba(png))
    _check_png_size(record, words)
    listed = _listed_ids(record)
    dtype = np.uint8 if len(listed) + 1 <= 255 else np.int32
    index_map = np.empty(words.shape, dtype=dtype)
    pixels = np.zeros(len(listed) + 2, dtype=np.int64)
    _index_pixels(words, MAX_SEGMENT_ID, listed, index_map, pixels)
    if pixels[-1] or not pixels[1:-1].all():
        in_png = listed[pixels[1:-1] > 0].tolist() + _unknown_ids(words, index_map, len(pixels) - 1)
        _check_png_segments(record, np.array(in_png, dtype=np.int64))
    return SegmentIndices(np.concatenate([[0], listed]), index_map, pixels[:-1])


def check_panoptic_png(record: dict, zeros: Optional[np.ndarray] = None) -> None:
    """The checks of :func:`read_segment_indices`, at less cost: the PNG's pixels are counted
    per id by the PQ evaluator's own pass (:func:`..evaluation.png.joint_counts`, by runs, as they
    are unfiltered), without an index map; a PNG that fails is read again for the error message.

    Args:
        record: as :func:`read_segment_indices`.
        zeros: int32 zeros of at least H * W, only read (calls may share it); None: allocated.
    Raises:
        FileNotFoundError, PanopticDataError: as :func:`read_segment_indices`.
    """
    png = _read_png(record)
    if png is None:  # another PNG format: PIL's route
        read_segment_indices(record)
        return
    _check_png_size(record, png)
    listed = _listed_ids(record)
    num_pixels = png.height * png.width
    if zeros is None or len(zeros) < num_pixels:
        zeros = np.zeros(num_pixels, dtype=np.int32)
    pixels = joint_counts(png, listed, zeros[:num_pixels], listed[:0]).sum(axis=1)
    if pixels[-1] or not pixels[1:-1].all():  # ids missing, or not listed: name them
        read_segment_indices(record)


def read_panoptic_png(record: dict) -> PanopticPNG:
    """Read and validate the panoptic PNG of a dataset record (see :func:`read_segment_indices`).

    Returns:
        the PNG's segments: its distinct ids in ascending order (0 among them when the PNG has
        void pixels) and the int64 index map into them.
    Raises:
        FileNotFoundError, PanopticDataError: as :func:`read_segment_indices`.
    """
    segments = read_segment_indices(record)
    index_map = segments.index_map.astype(np.int64)
    if segments.pixels[0]:
        return PanopticPNG(segments.segment_ids, index_map)
    return PanopticPNG(segments.segment_ids[1:], index_map - 1)
