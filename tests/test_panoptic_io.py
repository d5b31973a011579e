"""Images of every kind a dataset may hold are read into 3-channel uint8, or rejected by name."""

import re

import numpy as np
import pytest
from PIL import Image

from panoptic_fpn_ext.data import (
    PanopticDataError,
    id2rgb,
    read_image_file,
    read_panoptic_png,
    rgb2id,
)

EXIF_ORIENTATION = 274


def _rgb(height=20, width=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb2id_matches_the_coco_panoptic_formula():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    expected = [[int(r) + 256 * int(g) + 65536 * int(b) for r, g, b in row] for row in color]
    assert rgb2id(color).tolist() == expected
    np.testing.assert_array_equal(id2rgb(rgb2id(color)), color)
    assert id2rgb(np.array(256**3 - 1)).tolist() == [255, 255, 255]


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_rgb_png_is_read_exactly(tmp_path, image_format):
    rgb = _rgb()
    path = str(tmp_path / "a.png")
    Image.fromarray(rgb).save(path)
    image = read_image_file(path, image_format)
    expected = rgb if image_format == "RGB" else rgb[:, :, ::-1]
    np.testing.assert_array_equal(image, expected)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _rgb()[:, :, 0]
    path = str(tmp_path / "gray.png")
    Image.fromarray(gray).save(path)
    image = read_image_file(path, "BGR")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((20, 30, 1), 7, np.uint8)], axis=2)
    path = str(tmp_path / "rgba.png")
    Image.fromarray(rgba).save(path)
    np.testing.assert_array_equal(read_image_file(path, "RGB"), rgba[:, :, :3])


def test_palette_image_is_expanded(tmp_path):
    indices = np.arange(600, dtype=np.uint8).reshape(20, 30) % 4
    palette = [10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200]
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    path = str(tmp_path / "palette.png")
    image.save(path)
    expected = np.array(palette, np.uint8).reshape(4, 3)[indices]
    np.testing.assert_array_equal(read_image_file(path, "RGB"), expected)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 109).astype(np.uint16)
    path = str(tmp_path / "gray16.png")
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image_file(path, "RGB")
    assert image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image[:, :, 1], values >> 8)


def test_cmyk_jpeg_is_converted_to_three_channels(tmp_path):
    path = str(tmp_path / "cmyk.jpg")
    Image.fromarray(_rgb()).convert("CMYK").save(path, quality=100)
    image = read_image_file(path, "BGR")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    # What the viewer sees: 20 rows x 30 columns, red top-left block.
    shown = np.zeros((20, 30, 3), np.uint8)
    shown[:10, :15] = (255, 0, 0)
    # Orientation 6 means "rotate 90 degrees clockwise to display": store it rotated back.
    stored = np.ascontiguousarray(np.rot90(shown, k=1))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    image = read_image_file(path, "RGB").astype(int)
    assert image.shape == (20, 30, 3)
    assert np.abs(image - shown).mean() < 4


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file_is_rejected_by_name(tmp_path, suffix):
    path = tmp_path / f"cut.{suffix}"
    Image.fromarray(_rgb(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        PanopticDataError, match=re.escape(f"Cannot read image {path}") + ".*truncated"
    ):
        read_image_file(str(path), "BGR")


@pytest.mark.parametrize(
    "content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
)
def test_corrupt_file_is_rejected_by_name(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(PanopticDataError, match=re.escape(f"Cannot read image {path}")):
        read_image_file(str(path), "BGR")


def test_float_image_is_rejected_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((8, 8), np.float32)).save(path)
    with pytest.raises(PanopticDataError, match=re.escape(f"{path} has PIL mode 'F'")):
        read_image_file(str(path), "BGR")


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Image file {path} does not exist")):
        read_image_file(str(path), "BGR")


def test_read_panoptic_png_returns_the_id_map(tmp_path):
    ids = np.array([[0, 5, 5], [70000, 5, 0]], dtype=np.int64)
    path = str(tmp_path / "pan.png")
    Image.fromarray(id2rgb(ids)).save(path)
    record = {
        "file_name": "image.jpg",
        "image_id": 1,
        "height": 2,
        "width": 3,
        "pan_seg_file_name": path,
        "segments_info": [{"id": 5}, {"id": 70000}],
    }
    png = read_panoptic_png(record)
    assert png.segment_ids.tolist() == [0, 5, 70000]
    np.testing.assert_array_equal(png.ids(), ids)
