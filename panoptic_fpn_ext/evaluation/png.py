"""Panoptic PNGs read row by row, without a general image decoder.

A COCO-panoptic PNG holds one segment id per pixel as an 8-bit color, ``id = R + 256 G + 256² B``
(an alpha channel, if any, is ignored). The PQ evaluator never needs such an image whole:
:func:`read_filtered_png` checks the PNG's chunks and inflates its data stream (ISA-L), and
:func:`joint_counts` undoes the PNG row filters one row at a time, in compiled code that releases
the GIL (numba, see :mod:`.jit`), and counts each pixel straight into a joint histogram with the
predicted id of the same pixel (ids to segment indices: :mod:`.id_table`). :func:`decode_rgba` gives
the whole image where it is needed (predictions on a GPU, error messages).

Only 8-bit RGB and RGBA PNGs without interlacing, the format of COCO's and Cityscapes' panoptic
annotations, are read here; :func:`read_filtered_png` returns None for any other file, which is then
left to a general decoder.
"""

import logging
import struct
import zlib
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np

from ..data.panoptic_io import PanopticDataError
from .id_table import lookup_table
from .jit import jit
from .runs import boundary_buffer, count_row

__all__ = ["FilteredPng", "decode_rgba", "joint_counts", "read_filtered_png"]

try:  # ISA-L inflates ~1.7x faster than zlib; setup.py requires it
    from isal import isal_zlib as inflate_module
except ImportError:  # an environment installed without dependencies: same bytes, slower
    inflate_module = zlib
    logging.getLogger(__name__).info("isal is not installed: PNG data is inflated with zlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bytes per pixel of the color types read here (bit depth 8): RGB, RGBA.
_CHANNELS: Dict[int, int] = {2: 3, 6: 4}
# PNG filter types: None, Sub, Up, Average, Paeth.
_NONE, _SUB, _UP, _AVERAGE, _PAETH = 0, 1, 2, 3, 4
# Unsigned constants for the kernels' indices (an int64 would turn uint64 arithmetic to float).
_U1, _U2 = np.uint64(1), np.uint64(2)


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
        rows = inflate_module.decompress(image_data, bufsize=size)
    except inflate_module.error as e:
        raise _error(path, f"its image data is corrupt ({e})") from e
    if len(rows) != size:
        raise _error(
            path, f"its image data holds {len(rows)} bytes; {width}x{height} pixels need {size}"
        )
    return FilteredPng(path, height, width, channels, np.frombuffer(rows, dtype=np.uint8))


# Bytewise arithmetic on the 3 color bytes of a pixel held in one integer (R + 256 G + 256² B).
_LOW_7_BITS, _HIGH_BIT, _HIGH_7_BITS = 0x7F7F7F, 0x808080, 0xFEFEFE


@jit
def _add_bytes(a, b):
    """Bytewise sum modulo 256 of two pixels' color bytes."""
    return ((a & _LOW_7_BITS) + (b & _LOW_7_BITS)) ^ ((a ^ b) & _HIGH_BIT)


@jit
def _average_bytes(a, b):
    """Bytewise ``(a + b) >> 1`` (without overflow) of two pixels' color bytes."""
    return (a & b) + (((a ^ b) & _HIGH_7_BITS) >> 1)


@jit
def _paeth(left, up, up_left):
    """The PNG Paeth predictor of one byte."""
    to_left, to_up = abs(up - up_left), abs(left - up_left)
    to_up_left = abs(left + up - 2 * up_left)
    if to_left <= to_up and to_left <= to_up_left:
        return left
    return up if to_up <= to_up_left else up_left


@jit
def _paeth_bytes(left, up, up_left):
    """The Paeth predictor of a pixel's color bytes."""
    predicted = 0
    for shift in range(0, 24, 8):
        byte = _paeth((left >> shift) & 255, (up >> shift) & 255, (up_left >> shift) & 255)
        predicted |= byte << shift
    return predicted


@jit
def _color(data, position):
    """The 3 color bytes of the pixel at ``data[position]`` (uint64) as ``R + 256 G + 256² B``."""
    return (
        np.int64(data[position])
        | np.int64(data[position + _U1]) << 8
        | np.int64(data[position + _U2]) << 16
    )


@jit
def _unfilter_ids(data, start, channels, ids, previous) -> bool:
    """Undo the filter of one row, for the color bytes of its pixels only (a filter never mixes
    channels, so an alpha channel is skipped): ``data[start]`` is the row's filter type, the next
    ``len(ids) * channels`` bytes its filtered pixels; ``previous`` holds the ids of the row
    above (zeros for the first). Fills ``ids`` (int32 (W,)) with ``R + 256 G + 256² B`` of each
    pixel; False for an unknown filter type. ``start`` and ``channels`` are uint64: unsigned
    indices spare numba's check for negative ones, which would keep the loops from vectorising.

    One loop per filter type. Where Sub and Paeth predict a pixel from its left neighbour and the
    filtered value is 0 (inside a segment), the pixel is its left neighbour: a branch, predicted
    right almost everywhere, instead of the byte arithmetic that would chain every pixel of the
    row to the one before."""
    kind = data[start]
    first, width = start + _U1, np.uint64(len(ids))
    if kind == _NONE:
        for x in range(width):
            ids[x] = _color(data, first + x * channels)
    elif kind == _UP:
        for x in range(width):
            ids[x] = _add_bytes(_color(data, first + x * channels), np.int64(previous[x]))
    elif kind == _SUB:
        left = np.int64(0)  # the bytes left of the first pixel are 0
        for x in range(width):
            filtered = _color(data, first + x * channels)
            if filtered != 0:
                left = _add_bytes(filtered, left)
            ids[x] = left
    elif kind == _AVERAGE:
        left = np.int64(0)
        for x in range(width):
            average = _average_bytes(left, np.int64(previous[x]))
            left = _add_bytes(_color(data, first + x * channels), average)
            ids[x] = left
    elif kind == _PAETH:
        left, up_left = np.int64(0), np.int64(0)
        for x in range(width):
            up, filtered = np.int64(previous[x]), _color(data, first + x * channels)
            if up != up_left:
                left = _add_bytes(filtered, _paeth_bytes(left, up, up_left))
            elif filtered != 0:  # every byte above equals the one above-left: left predicts
                left = _add_bytes(filtered, left)
            ids[x] = left
            up_left = up
    else:
        return False
    return True


@jit
def _unfilter_and_count(data, height, width, channels, gt_ids, pred_map, pred_ids, counts):
    """See :func:`joint_counts`; returns -1, or the first row with an unknown filter type.
    Indices are uint64 (see :func:`_unfilter_ids`)."""
    gt_table, pred_table = lookup_table(gt_ids), lookup_table(pred_ids)
    boundaries = boundary_buffer(width)
    width, channels = np.uint64(width), np.uint64(channels)
    ids, previous = np.zeros(width, dtype=np.int32), np.zeros(width, dtype=np.int32)
    for y in range(np.uint64(height)):
        ids, previous = previous, ids
        if not _unfilter_ids(data, y * (_U1 + width * channels), channels, ids, previous):
            return np.int64(y)
        pred_row = pred_map[y * width : (y + _U1) * width]
        count_row(ids, pred_row, np.int64(-1), gt_table, pred_table, counts, boundaries)
    return -1


@jit
def _unfilter_rgba(data, height, width, channels, words):
    """See :func:`decode_rgba`; ``words`` is its output as int32 (H, W). Returns -1, or the
    first row with an unknown filter type."""
    width, channels = np.uint64(width), np.uint64(channels)
    previous = np.zeros(width, dtype=np.int32)
    for y in range(np.uint64(height)):
        if not _unfilter_ids(data, y * (_U1 + width * channels), channels, words[y], previous):
            return np.int64(y)
        previous = words[y]
    alpha = np.int32(-(1 << 24))  # 255 << 24 as int32
    for y in range(np.uint64(height)):
        for x in range(width):
            words[y, x] |= alpha
    return -1


def _unknown_filter(png: FilteredPng, row: int) -> PanopticDataError:
    kind = png.data[row * (1 + png.width * png.channels)]
    return _error(png.path, f"row {row} has the unknown filter type {kind}")


def joint_counts(
    png: FilteredPng, gt_ids: np.ndarray, pred_map: np.ndarray, pred_ids: np.ndarray
) -> np.ndarray:
    """Pixel counts of every (GT segment, predicted segment) pair of a panoptic PNG and a
    predicted id map.

    Args:
        png: the GT.
        gt_ids: int64 (Kg,), the GT segment ids (distinct, not 0).
        pred_map: int32 or int64 (H * W,), the predicted segment id of each pixel ``y * W + x``.
        pred_ids: int64 (Kp,), the predicted segment ids (distinct, not 0).
    Returns:
        int64 (Kg + 2, Kp + 2): entry [i, j] counts the pixels of GT index i and predicted index
        j, where index 0 is void (id 0), ``k + 1`` the id ``ids[k]``, and the last index any
        other id.
    Raises:
        PanopticDataError: a row has an unknown filter type.
        ValueError: ``pred_map`` has the wrong length.
    """
    if len(pred_map) != png.height * png.width:
        raise ValueError(f"{len(pred_map)} predicted ids for {png.height}x{png.width} pixels")
    counts = np.zeros((len(gt_ids) + 2) * (len(pred_ids) + 2), dtype=np.int64)
    bad_row = _unfilter_and_count(
        png.data, png.height, png.width, png.channels, gt_ids, pred_map, pred_ids, counts
    )
    if bad_row >= 0:
        raise _unknown_filter(png, bad_row)
    return counts.reshape(len(gt_ids) + 2, len(pred_ids) + 2)


def decode_rgba(png: FilteredPng) -> np.ndarray:
    """The image's pixels as uint8 (H, W, 4): R, G, B and 255 (see :func:`.id_index.rgba_ids`).

    Raises:
        PanopticDataError: a row has an unknown filter type.
    """
    rgba = np.empty((png.height, png.width, 4), dtype=np.uint8)
    bad_row = _unfilter_rgba(
        png.data, png.height, png.width, png.channels, rgba.view("<i4")[..., 0]
    )
    if bad_row >= 0:
        raise _unknown_filter(png, bad_row)
    return rgba
