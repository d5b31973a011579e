"""The evaluator's PNG reader: every filter type decoded as OpenCV (libpng) decodes it, pixels
counted into the joint histogram exactly, other PNGs left to OpenCV, damaged files named."""

import io
import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from png_files import chunk, encode_png, segment_pixels
from panoptic_fpn_ext.data import PanopticDataError
from panoptic_fpn_ext.evaluation.png import (
    FilteredPng,
    decode_rgba,
    joint_counts,
    read_filtered_png,
)

PATH = "gt/000042.png"


def opencv_rgba(data: bytes) -> np.ndarray:
    """The pixels as libpng decodes them (through OpenCV), R, G, B and 255."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return expected_rgba(image[..., 2::-1])


def expected_rgba(pixels: np.ndarray) -> np.ndarray:
    return np.dstack([pixels[..., :3], np.full(pixels.shape[:2], 255, np.uint8)])


def read(data: bytes) -> FilteredPng:
    png = read_filtered_png(data, PATH)
    assert png is not None
    return png


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [4, 2, 1, 3, 0]])
def test_every_filter_type_decodes_as_libpng_does(channels, kinds):
    rng = np.random.default_rng(channels * 10 + len(kinds) + kinds[0])
    for height, width in [(13, 17), (9, 1), (1, 6)]:
        for pixels in (
            segment_pixels(rng, height, width, channels)[0],
            rng.integers(0, 256, (height, width, channels), dtype=np.uint8),
        ):
            data = encode_png(pixels, kinds, pieces=3)
            np.testing.assert_array_equal(opencv_rgba(data), expected_rgba(pixels))
            png = read(data)
            assert (png.shape, png.channels) == ((height, width), channels)
            np.testing.assert_array_equal(decode_rgba(png), expected_rgba(pixels))


def test_pillow_written_pngs_decode_as_libpng_does():
    rng = np.random.default_rng(1)
    for mode, channels in (("RGB", 3), ("RGBA", 4)):
        pixels = segment_pixels(rng, 40, 50, channels)[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, "PNG")
        png = read(buffer.getvalue())
        np.testing.assert_array_equal(decode_rgba(png), opencv_rgba(buffer.getvalue()))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    channels=st.sampled_from([3, 4]),
    kinds=st.lists(st.integers(0, 4), min_size=1, max_size=9),
    levels=st.integers(1, 256),  # few levels: runs of equal bytes (Paeth's shortcut)
    seed=st.integers(0, 2**32 - 1),
    pieces=st.integers(1, 4),
)
def test_random_pngs_decode_to_their_pixels(shape, channels, kinds, levels, seed, pieces):
    rng = np.random.default_rng(seed)
    pixels = (255 - rng.integers(0, levels, shape + (channels,))).astype(np.uint8)
    png = read(encode_png(pixels, kinds, pieces))
    np.testing.assert_array_equal(decode_rgba(png), expected_rgba(pixels))


@pytest.mark.parametrize("pred_dtype", [np.int32, np.int64])
def test_joint_counts_count_every_pixel_once(pred_dtype):
    rng = np.random.default_rng(5)
    row_of_id = np.zeros(1 << 24, dtype=np.uint16)
    column_of_id = np.zeros(1 << 24, dtype=np.uint16)
    # Predicted ids: small, 24-bit, and outside [0, 2^24) (counted in column 0).
    pred_values = np.array([0, 3, 0xABCDEF, (1 << 24) - 1, -5, 1 << 24], dtype=pred_dtype)
    column_of_id[pred_values[:4]] = [1, 2, 3, 1]
    columns_of_values = np.array([1, 2, 3, 1, 0, 0])
    for channels in (3, 4):
        pixels, ids = segment_pixels(rng, 31, 23, channels)
        present = np.unique(ids)
        row_of_id[present] = rng.integers(0, 6, len(present))
        picks = rng.integers(0, len(pred_values), ids.size)
        picks[: ids.size // 2] = 1  # runs of one key
        counts = joint_counts(
            read(encode_png(pixels)), row_of_id, 6, pred_values[picks], column_of_id, 4
        )
        expected = np.bincount(
            row_of_id[ids.reshape(-1)] * 4 + columns_of_values[picks], minlength=24
        )
        np.testing.assert_array_equal(counts, expected)
        row_of_id[present] = 0


def test_joint_counts_refuse_rows_and_columns_out_of_range():
    pixels, ids = segment_pixels(np.random.default_rng(6), 5, 4)
    png = read(encode_png(pixels))
    zeros = np.zeros(1 << 24, dtype=np.uint16)
    table = zeros.copy()
    table[ids[2, 3]] = 2  # a third row, of two
    columns = zeros.copy()
    columns[9] = 3  # a fourth column, of three
    pred = np.full(20, 9, np.int32)
    for row_of_id, pred_ids, column_of_id, message in [
        (table, np.zeros(20, np.int32), zeros, "out of the 2x3 histogram"),
        (zeros, pred, columns, "out of the 2x3 histogram"),
        (zeros[: 1 << 16], pred, zeros, "id tables of 65536 rows and 16777216 columns"),
        (zeros, pred, zeros[:5], "id tables of 16777216 rows and 5 columns"),
        (zeros, np.zeros(19, np.int32), zeros, "19 predicted ids for 5x4 pixels"),
    ]:
        with pytest.raises(ValueError, match=message):
            joint_counts(png, row_of_id, 2, pred_ids, column_of_id, 3)


def test_other_pngs_and_files_are_left_to_a_general_decoder():
    rng = np.random.default_rng(2)
    pixels = segment_pixels(rng, 12, 10)[0]
    assert read_filtered_png(encode_png(pixels, interlace=True), PATH) is None
    np.testing.assert_array_equal(
        opencv_rgba(encode_png(pixels, interlace=True)), expected_rgba(pixels)
    )
    for image in (
        Image.fromarray(pixels).convert("P"),
        Image.fromarray(pixels[..., 0]),  # grayscale
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 257),  # 16-bit grayscale
    ):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        assert read_filtered_png(buffer.getvalue(), PATH) is None
    ok, rgb48 = cv2.imencode(".png", pixels.astype(np.uint16) * 257)
    assert ok and read_filtered_png(rgb48.tobytes(), PATH) is None
    ok, jpeg = cv2.imencode(".jpg", pixels)
    assert ok and read_filtered_png(jpeg.tobytes(), PATH) is None


def damaged_pngs():
    """(PNG bytes, message) of damaged 8-bit RGB PNGs."""
    pixels = segment_pixels(np.random.default_rng(3), 8, 6)[0]
    good = encode_png(pixels)
    idat = good.index(b"IDAT")
    flipped = bytearray(good)
    flipped[idat + 6] ^= 1
    taller = struct.pack(">IIBBBBB", 6, 9, 8, 2, 0, 0, 0)
    garbage = good[:8] + chunk(b"IHDR", good[16:29]) + chunk(b"IDAT", b"\x78\x9c junk")
    return [
        (good[:-3], "ends inside its IEND chunk"),
        (good[: idat + 20], "ends inside its IDAT chunk"),
        (good[:-12], "ends before its IEND chunk"),
        (bytes(flipped), "IDAT chunk fails its CRC check"),
        (garbage + chunk(b"IEND", b""), "image data is corrupt"),
        (encode_png(pixels, header=taller), "holds 152 bytes; 6x9 pixels need 171"),
        (encode_png(pixels, kinds=[0, 0, 5]), "row 2 has the unknown filter type 5"),
        (good[:8] + good[33:], "does not start with a 13-byte IHDR chunk"),
        (encode_png(pixels[:0], header=struct.pack(">IIBBBBB", 6, 0, 8, 2, 0, 0, 0)), "0 pixels"),
    ]


@pytest.mark.parametrize("data, message", damaged_pngs())
def test_damaged_pngs_are_named(data, message):
    table = np.zeros(1 << 24, dtype=np.uint16)
    with pytest.raises(PanopticDataError, match=f"Cannot decode panoptic PNG {PATH}: .*{message}"):
        png = read_filtered_png(data, PATH)
        joint_counts(png, table, 1, np.zeros(png.height * png.width, np.int32), table, 1)
    with pytest.raises(PanopticDataError, match=message):
        decode_rgba(read_filtered_png(data, PATH))
