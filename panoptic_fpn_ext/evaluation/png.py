"""Panoptic PNGs read row by row, without a general image decoder.

A COCO-panoptic PNG holds one segment id per pixel as an 8-bit color, ``id = R + 256 G + 256² B``
(an alpha channel, if any, is ignored). The PQ evaluator never needs such an image whole:
:func:`read_filtered_png` checks the PNG's chunks and inflates its data stream (zlib-ng), and
:func:`joint_counts` undoes the PNG row filters one row at a time, in compiled code that releases
the GIL (numba, :mod:`.png_kernels`, loaded at the first call), and counts each pixel straight into
a joint histogram. :func:`decode_rgba` gives the whole image where it is needed (predictions on a
GPU, error messages).

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

__all__ = ["FilteredPng", "decode_rgba", "joint_counts", "read_filtered_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bytes per pixel of the color types read here (bit depth 8): RGB, RGBA.
_CHANNELS: Dict[int, int] = {2: 3, 6: 4}


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


def _unknown_filter(png: FilteredPng, row: int) -> PanopticDataError:
    kind = png.data[row * (1 + png.width * png.channels)]
    return _error(png.path, f"row {row} has the unknown filter type {kind}")


def joint_counts(
    png: FilteredPng, row_of_id: np.ndarray, num_rows: int, columns: np.ndarray, num_columns: int
) -> np.ndarray:
    """Pixel counts of every (GT row, column) pair of a panoptic PNG and a column map.

    Args:
        png: the GT, whose pixel ``(y, x)`` has segment id ``s``.
        row_of_id: uint16 (2^24,), the histogram row of each segment id, in [0, num_rows).
        columns: int32 or int64 (H * W,), the histogram column of each pixel, in
            [0, num_columns).
    Returns:
        int64 (num_rows * num_columns,): entry
        ``row_of_id[s] * num_columns + columns[y * W + x]`` counts such pixels.
    Raises:
        PanopticDataError: a row has an unknown filter type.
        ValueError: ``row_of_id`` or ``columns`` has the wrong length, or a value out of range.
    """
    if len(row_of_id) != 1 << 24 or len(columns) != png.height * png.width:
        raise ValueError(
            f"{len(row_of_id)} rows for 2^24 ids or {len(columns)} columns for "
            f"{png.height}x{png.width} pixels"
        )
    from .png_kernels import OUT_OF_RANGE, unfilter_and_count  # compiled on first use

    counts = np.zeros(num_rows * num_columns, dtype=np.int64)
    status = unfilter_and_count(
        png.data,
        png.height,
        png.width,
        png.channels,
        row_of_id,
        num_rows,
        columns,
        num_columns,
        counts,
    )
    if status == OUT_OF_RANGE:
        raise ValueError(
            f"{png.path}: a pixel's row (row_of_id) or column is out of the {num_rows}x"
            f"{num_columns} histogram"
        )
    if status >= 0:
        raise _unknown_filter(png, status)
    return counts


def decode_rgba(png: FilteredPng) -> np.ndarray:
    """The image's pixels as uint8 (H, W, 4): R, G, B and 255 (see :func:`.pq.rgba_ids`).

    Raises:
        PanopticDataError: a row has an unknown filter type.
    """
    from .png_kernels import unfilter_rgba  # compiled on first use

    rgba = np.empty((png.height, png.width, 4), dtype=np.uint8)
    bad_row = unfilter_rgba(
        png.data, png.height, png.width, png.channels, rgba.view("<u4")[..., 0]
    )
    if bad_row >= 0:
        raise _unknown_filter(png, bad_row)
    return rgba
