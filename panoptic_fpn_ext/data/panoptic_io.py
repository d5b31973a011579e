"""Reading dataset images and COCO-panoptic PNGs, with errors that name the file at fault.

A COCO-panoptic PNG stores one segment id per pixel as RGB: ``id = R + 256 G + 256² B``; id 0 is
void (unlabelled). Each image's ``segments_info`` in the JSON lists the segments of its PNG.
"""

from typing import NamedTuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "PanopticDataError",
    "PanopticPNG",
    "id2rgb",
    "read_image_file",
    "rgb2id",
]

VOID_ID = 0
# 16-bit grayscale modes: PIL's own conversion to "RGB" or "L" clips them at 255, so they are
# scaled here (high byte, the same reduction PIL applies to 48-bit RGB PNGs).
_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes whose value range is not fixed by the file format; no conversion would be safe.
_UNSUPPORTED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


class PanopticDataError(ValueError):
    """A dataset file or record does not match what the panoptic format requires."""


class PanopticPNG(NamedTuple):
    """The segments of one panoptic PNG.

    Attributes:
        segment_ids: int64 array (K,), the distinct segment ids of the PNG in ascending order;
            0 (void) is among them when the PNG has void pixels.
        index_map: int64 array (H, W); ``segment_ids[index_map]`` is the PNG's id map.
    """

    segment_ids: np.ndarray
    index_map: np.ndarray

    def ids(self) -> np.ndarray:
        """The id map: int64 array (H, W), one segment id per pixel (0 = void)."""
        return self.segment_ids[self.index_map]


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO-panoptic PNG.

    Args:
        color: uint8 array (..., 3), RGB.
    Returns:
        int64 array (...), ``R + 256 G + 256² B``.
    """
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`.

    Args:
        ids: integer array (...), each in [0, 256³).
    Returns:
        uint8 array (..., 3), RGB.
    """
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


# What PIL raises for unreadable files: OSError (unknown format, truncated data), SyntaxError and
# ValueError (malformed headers or chunks), DecompressionBombError (absurd pixel counts).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _unreadable(file_name: str, error: Exception) -> PanopticDataError:
    return PanopticDataError(
        f"Cannot read image {file_name}: {type(error).__name__}: {error}. Expected a readable "
        "image file (is it truncated or corrupt?)"
    )


def _image_mode(file_name: str) -> str:
    """PIL mode of an image file, from its header only."""
    with PathManager.open(file_name, "rb") as f:
        return Image.open(f).mode


def _read_sixteen_bit_gray(file_name: str, image_format: str) -> np.ndarray:
    """A 16-bit grayscale image reduced to 8 bits (high byte), then converted to ``image_format``."""
    raw = utils.read_image(file_name, format=None)  # uint16 (H, W), EXIF orientation applied
    gray = Image.fromarray((raw >> 8).astype(np.uint8))
    return utils.convert_PIL_to_numpy(gray, image_format)


def read_image_file(file_name: str, image_format: str) -> np.ndarray:
    """Read an image like Detectron2's ``read_image``, with errors that name the file.

    EXIF orientation is applied (as ``read_image`` does). Grayscale, palette, RGBA and CMYK
    images are converted to ``image_format``; 16-bit grayscale is reduced to 8 bits first.

    Args:
        file_name: path of the image.
        image_format: a format of ``detection_utils.read_image``, e.g. "BGR", "RGB", "L".
    Returns:
        uint8 array (H, W, C), C-contiguous: C = 3 for "BGR"/"RGB", 1 for "L".
    Raises:
        FileNotFoundError: the file does not exist.
        PanopticDataError: the file is not a readable image (corrupt, truncated, unknown format)
            or has a 32-bit integer/float mode.
    """
    if not PathManager.isfile(file_name):
        raise FileNotFoundError(f"Image file {file_name} does not exist")
    try:
        mode = _image_mode(file_name)
    except _DECODE_ERRORS as e:
        raise _unreadable(file_name, e) from e
    if mode in _UNSUPPORTED_MODES:
        raise PanopticDataError(
            f"Image {file_name} has PIL mode {mode!r} ({_UNSUPPORTED_MODES[mode]}), whose value "
            "range is not defined; expected an 8-bit (or 16-bit grayscale) image"
        )
    try:
        if mode in _SIXTEEN_BIT_GRAY_MODES:
            image = _read_sixteen_bit_gray(file_name, image_format)
        else:
            image = utils.read_image(file_name, format=image_format)
    except _DECODE_ERRORS as e:
        raise _unreadable(file_name, e) from e
    # "BGR" is a reversed view; PIL copies such an array byte by byte before resizing it
    # (~7 ms for 640x480), a contiguous one at memory speed
    return np.ascontiguousarray(image)


def _describe(record: dict) -> str:
    return f"image_id {record['image_id']!r} ({record['file_name']})"


def _check_png_size(record: dict, index_map: np.ndarray) -> None:
    expected = (record["height"], record["width"])
    if index_map.shape != expected:
        raise PanopticDataError(
            f"Panoptic PNG {record['pan_seg_file_name']} of {_describe(record)} is "
            f"{index_map.shape[0]}x{index_map.shape[1]} (HxW); its annotation says "
            f"{expected[0]}x{expected[1]}"
        )


def _check_png_segments(record: dict, segment_ids: np.ndarray) -> None:
    in_png = set(segment_ids.tolist()) - {VOID_ID}
    in_json = {s["id"] for s in record["segments_info"]}
    if in_png != in_json:
        raise PanopticDataError(
            f"Panoptic PNG {record['pan_seg_file_name']} of {_describe(record)} does not match "
            f"its segments_info: ids in the PNG but not in the JSON: {sorted(in_png - in_json)}; "
            f"ids in the JSON but not in the PNG: {sorted(in_json - in_png)}"
        )
