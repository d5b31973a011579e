"""Panoptic PNGs read row by row, without a general image decoder.

A COCO-panoptic PNG holds one segment id per pixel as an 8-bit color, ``id = R + 256 G + 256² B``
(an alpha channel, if any, is ignored). The PQ evaluator never needs such an image whole:
:func:`read_filtered_png` checks the PNG's chunks and inflates its data stream (zlib-ng), and
:func:`joint_counts` undoes the PNG row filters one row at a time, in compiled code that releases
the GIL (numba, see :mod:`.jit`), and counts each pixel straight into a joint histogram with the
predicted id of the same pixel. :func:`decode_rgba` gives the whole image where it is needed
(predictions on a GPU, error messages).

Only 8-bit RGB and RGBA PNGs without interlacing, the format of COCO's and Cityscapes' panoptic
annotations, are read here; :func:`read_filtered_png` returns None for any other file, which is
then left to a general decoder.
"""

import struct
import zlib
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np
from zlib_ng import zlib_ng

from ..data.panoptic_io import PanopticDataError
from .jit import jit

__all__ = ["FilteredPng", "decode_rgba", "joint_counts", "read_filtered_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bytes per pixel of the color types read here (bit depth 8): RGB, RGBA.
_CHANNELS: Dict[int, int] = {2: 3, 6: 4}
# PNG filter types: None, Sub, Up, Average, Paeth.
_NONE, _SUB, _UP, _AVERAGE = 0, 1, 2, 3
# What _unfilter_and_count returns for a row or column out of the histogram.
_OUT_OF_RANGE = -2
# Number of 24-bit segment ids, and so the length of an id table.
_NUM_IDS = 1 << 24


class FilteredPng(NamedTuple):
    """An 8-bit RGB or RGBA PNG without interlacing, inflated but not yet unfiltered.

    Attributes:
        path: the file, for error messages.
        height, width: in pixels.
        channels: bytes per pixel, 3 (RGB) or 4 (RGBA).
        data: uint8 (height * (1 + width * channels),): each row's filter type, then its
            ``width * channels`` filtered bytes.
    """

    path: str
    height: int
    width: int
    channels: int
    data: np.ndarray

    @property
    def shape(self) -> Tuple[int, int]:
        """(height, width), in pixels."""
        return self.height, self.width


def _error(path: str, problem: str) -> PanopticDataError:
    return PanopticDataError(f"Cannot decode panoptic PNG {path}: {problem}")


def _chunks(data: bytes, path: str) -> Iterator[Tuple[bytes, memoryview]]:
    """(type, body) of each chunk of a PNG file up to IEND, each checked against its CRC."""
    view = memoryview(data)
    position = len(PNG_SIGNATURE)
    while True:
        if position + 8 > len(data):
            raise _error(path, "the file ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            raise _error(path, f"the file ends inside its {kind.decode('latin-1')} chunk")
        body = view[position + 8 : end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _error(path, f"its {kind.decode('latin-1')} chunk fails its CRC check")
        yield kind, body
        if kind == b"IEND":
            return
        position = end


def read_filtered_png(data: bytes, path: str) -> Optional[FilteredPng]:
    """Check a PNG file's chunks and inflate its image data, for :func:`joint_counts` or
    :func:`decode_rgba`.

    Args:
        data: the file's bytes.
        path: names the file in error messages.
    Returns:
        the image, or None when the bytes are not an 8-bit RGB or RGBA PNG without interlacing
        (or not a PNG at all).
    Raises:
        PanopticDataError: a PNG of that format that is cut short, fails a CRC check, or whose
            image data is corrupt or not of the image's size.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    chunks = _chunks(data, path)
    kind, header = next(chunks)
    if kind != b"IHDR" or len(header) != 13:
        raise _error(path, "it does not start with a 13-byte IHDR chunk")
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", header
    )
    if depth != 8 or color_type not in _CHANNELS or (compression, filtering, interlace) != (0,) * 3:
        return None
    if width == 0 or height == 0:
        raise _error(path, f"its IHDR chunk gives a size of {width}x{height} pixels")
    image_data = b"".join(body for kind, body in chunks if kind == b"IDAT")
    channels = _CHANNELS[color_type]
    size = height * (1 + width * channels)
    try:
        rows = zlib_ng.decompress(image_data, bufsize=size)
    except zlib_ng.error as e:
        raise _error(path, f"its image data is corrupt ({e})") from e
    if len(rows) != size:
        raise _error(
            path, f"its image data holds {len(rows)} bytes; {width}x{height} pixels need {size}"
        )
    return FilteredPng(path, height, width, channels, np.frombuffer(rows, dtype=np.uint8))


@jit
def _paeth(left: int, up: int, up_left: int) -> int:
    """The PNG Paeth predictor of one byte."""
    to_left, to_up = abs(up - up_left), abs(left - up_left)
    to_up_left = abs(left + up - 2 * up_left)
    if to_left <= to_up and to_left <= to_up_left:
        return left
    return up if to_up <= to_up_left else up_left


@jit
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


@jit
def _unfilter_and_count(
    data, height, width, channels, row_of_id, num_rows, pred_ids, column_of_id, num_columns, counts
):
    """See :func:`joint_counts`; returns -1, the first row with an unknown filter type, or
    _OUT_OF_RANGE."""
    rows = np.zeros((2, width * channels), dtype=np.uint8)
    key, run = 0, 0  # pixels are counted in runs of one key
    for y in range(height):
        row, previous = rows[y % 2], rows[1 - y % 2]
        if not _unfilter_row(data, y * (1 + width * channels), channels, row, previous):
            return y
        last_id, base, last_pred, column = -1, 0, -1, 0
        for x in range(width):
            j = x * channels
            segment_id = np.int64(row[j]) | np.int64(row[j + 1]) << 8 | np.int64(row[j + 2]) << 16
            if segment_id != last_id:
                if row_of_id[segment_id] >= num_rows:
                    return _OUT_OF_RANGE
                last_id, base = segment_id, np.int64(row_of_id[segment_id]) * num_columns
            pred_id = np.int64(pred_ids[y * width + x])
            if pred_id != last_pred:
                last_pred = pred_id
                column = np.int64(column_of_id[pred_id]) if 0 <= pred_id < _NUM_IDS else 0
                if column >= num_columns:
                    return _OUT_OF_RANGE
            if base + column != key:
                counts[key] += run
                key, run = base + column, 0
            run += 1
    counts[key] += run
    return -1


@jit
def _unfilter_rgba(data, height, width, channels, words):
    """See :func:`decode_rgba`; ``words`` is its output as uint32 (H, W). Returns -1, or the
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


def _unknown_filter(png: FilteredPng, row: int) -> PanopticDataError:
    kind = png.data[row * (1 + png.width * png.channels)]
    return _error(png.path, f"row {row} has the unknown filter type {kind}")


def joint_counts(
    png: FilteredPng,
    row_of_id: np.ndarray,
    num_rows: int,
    pred_ids: np.ndarray,
    column_of_id: np.ndarray,
    num_columns: int,
) -> np.ndarray:
    """Pixel counts of every (GT row, predicted column) pair of a panoptic PNG and a predicted id
    map, looked up in one table per side.

    Args:
        png: the GT, whose pixel ``(y, x)`` has segment id ``s``.
        row_of_id: uint16 (2^24,), the histogram row of each segment id, in [0, num_rows).
        pred_ids: int32 or int64 (H * W,), the predicted segment id ``p`` of each pixel
            ``y * W + x``.
        column_of_id: uint16 (2^24,), the histogram column of each predicted id, in
            [0, num_columns); ids outside [0, 2^24) are counted in column 0.
    Returns:
        int64 (num_rows * num_columns,): entry ``row_of_id[s] * num_columns + column_of_id[p]``
        counts such pixels.
    Raises:
        PanopticDataError: a row has an unknown filter type.
        ValueError: a table or ``pred_ids`` has the wrong length, or a table a value out of range.
    """
    if len(row_of_id) != _NUM_IDS or len(column_of_id) != _NUM_IDS:
        raise ValueError(
            f"id tables of {len(row_of_id)} rows and {len(column_of_id)} columns; expected one "
            "entry for each of the 2^24 ids"
        )
    if len(pred_ids) != png.height * png.width:
        raise ValueError(f"{len(pred_ids)} predicted ids for {png.height}x{png.width} pixels")
    counts = np.zeros(num_rows * num_columns, dtype=np.int64)
    status = _unfilter_and_count(
        png.data,
        png.height,
        png.width,
        png.channels,
        row_of_id,
        num_rows,
        pred_ids,
        column_of_id,
        num_columns,
        counts,
    )
    if status == _OUT_OF_RANGE:
        raise ValueError(
            f"{png.path}: a pixel's row (row_of_id) or column (column_of_id) is out of the "
            f"{num_rows}x{num_columns} histogram"
        )
    if status >= 0:
        raise _unknown_filter(png, status)
    return counts


def decode_rgba(png: FilteredPng) -> np.ndarray:
    """The image's pixels as uint8 (H, W, 4): R, G, B and 255 (see :func:`.id_index.rgba_ids`).

    Raises:
        PanopticDataError: a row has an unknown filter type.
    """
    rgba = np.empty((png.height, png.width, 4), dtype=np.uint8)
    bad_row = _unfilter_rgba(
        png.data, png.height, png.width, png.channels, rgba.view("<u4")[..., 0]
    )
    if bad_row >= 0:
        raise _unknown_filter(png, bad_row)
    return rgba
