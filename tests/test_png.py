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
    # Listed predicted ids: small and 24-bit; unlisted ones: also outside [0, 2^24).
    pred_ids = np.array([3, 0xABCDEF, (1 << 24) - 1])
    pred_values = np.array([0, *pred_ids, 4, -5, 1 << 24], dtype=pred_dtype)
    pred_index = np.array([0, 1, 2, 3, 4, 4, 4])
    for channels in (3, 4):
        pixels, ids = segment_pixels(rng, 31, 23, channels)
        present = np.unique(ids)
        gt_ids = rng.permutation(present[present > 0])[: len(present) - 2]  # some unlisted
        index_of = {0: 0, **{int(i): k + 1 for k, i in enumerate(gt_ids)}}
        gt_index = np.array([index_of.get(i, len(gt_ids) + 1) for i in ids.reshape(-1).tolist()])
        picks = rng.integers(0, len(pred_values), ids.size)
        picks[: ids.size // 2] = 1  # runs of one pair
        counts = joint_counts(read(encode_png(pixels)), gt_ids, pred_values[picks], pred_ids)
        expected = np.zeros((len(gt_ids) + 2, 5), dtype=np.int64)
        np.add.at(expected, (gt_index, pred_index[picks]), 1)
        np.testing.assert_array_equal(counts, expected)


def test_joint_counts_refuse_a_prediction_of_another_size():
    png = read(encode_png(segment_pixels(np.random.default_rng(6), 5, 4)[0]))
    with pytest.raises(ValueError, match="19 predicted ids for 5x4 pixels"):
        joint_counts(png, np.array([1]), np.zeros(19, np.int32), np.array([1]))


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
    no_ids = np.zeros(0, dtype=np.int64)
    with pytest.raises(PanopticDataError, match=f"Cannot decode panoptic PNG {PATH}: .*{message}"):
        png = read_filtered_png(data, PATH)
        joint_counts(png, no_ids, np.zeros(png.height * png.width, np.int32), no_ids)
    with pytest.raises(PanopticDataError, match=message):
        decode_rgba(read_filtered_png(data, PATH))


def test_without_isal_the_standard_zlib_inflates_the_same_bytes(monkeypatch):
    """An environment installed without dependencies (no isal) still reads the PNGs, and any
    damage is still named."""
    import zlib

    from panoptic_fpn_ext.evaluation import png as png_module

    pixels = segment_pixels(np.random.default_rng(7), 12, 15, 3)[0]
    data = encode_png(pixels, [4, 1, 2], pieces=2)
    with_isal = read(data)
    monkeypatch.setattr(png_module, "inflate_module", zlib)
    with_zlib = read(data)
    np.testing.assert_array_equal(with_zlib.data, with_isal.data)
    np.testing.assert_array_equal(decode_rgba(with_zlib), expected_rgba(pixels))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    corrupt = data[: idat - 4] + chunk(b"IDAT", b"\x00" * length) + data[idat + 4 + length + 4 :]
    with pytest.raises(PanopticDataError, match="000042.png.*corrupt"):
        read_filtered_png(corrupt, PATH)
