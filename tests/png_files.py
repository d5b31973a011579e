"""PNG files written byte by byte, with a chosen filter type per row (encoders choose their own),
split image data and Adam7 interlacing: test input for the plugin's PNG reader."""

import struct
import zlib
from typing import Optional, Sequence

import numpy as np

COLOR_TYPES = {3: 2, 4: 6}  # channels -> PNG color type (RGB, RGBA)
# Adam7 passes: (first row, first column, row step, column step).
ADAM7 = [
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def paeth(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    """The Paeth predictor as the PNG specification writes it."""
    estimate = left + up - up_left
    to_left, to_up, to_up_left = (np.abs(estimate - v) for v in (left, up, up_left))
    return np.where(
        (to_left <= to_up) & (to_left <= to_up_left),
        left,
        np.where(to_up <= to_up_left, up, up_left),
    )


def filtered_rows(pixels: np.ndarray, kinds: Sequence[int]) -> bytes:
    """Each row of uint8 (H, W, C) as PNG filter type ``kinds[y % len(kinds)]`` writes it (a type
    above 4, which PNG does not define, with the row's bytes as they are)."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(np.int64)
    out, previous = [], np.zeros(width * channels, dtype=np.int64)
    for y, row in enumerate(rows):
        kind = kinds[y % len(kinds)]
        left = np.concatenate([np.zeros(channels, np.int64), row[:-channels]])
        up_left = np.concatenate([np.zeros(channels, np.int64), previous[:-channels]])
        predicted = [0, left, previous, (left + previous) // 2, paeth(left, previous, up_left), 0]
        filtered = (row - predicted[min(kind, 5)]) & 255
        out.append(bytes([kind]) + filtered.astype(np.uint8).tobytes())
        previous = row
    return b"".join(out)


def encode_png(
    pixels: np.ndarray,
    kinds: Sequence[int] = (0, 1, 2, 3, 4),
    pieces: int = 1,
    interlace: bool = False,
    header: Optional[bytes] = None,
) -> bytes:
    """An 8-bit RGB or RGBA PNG of uint8 (H, W, 3 or 4) pixels; row y filtered with
    ``kinds[y % len(kinds)]``; image data split into ``pieces`` IDAT chunks; ``header``
    replaces the IHDR chunk's body."""
    height, width, channels = pixels.shape
    if interlace:
        data = b"".join(
            filtered_rows(pixels[y0::dy, x0::dx], kinds)
            for y0, x0, dy, dx in ADAM7
            if pixels[y0::dy, x0::dx].size
        )
    else:
        data = filtered_rows(pixels, kinds)
    stream = zlib.compress(data)
    bounds = np.linspace(0, len(stream), pieces + 1).astype(int)
    if header is None:
        header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(b"IDAT", stream[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        + chunk(b"IEND", b"")
    )


def segment_pixels(rng: np.random.Generator, height: int, width: int, channels: int = 3):
    """uint8 (H, W, C) pixels of a few rectangles of random 24-bit colors on a random one (runs
    of equal pixels, as in panoptic PNGs), and their ids (int64 (H, W))."""
    ids = np.full((height, width), rng.integers(1 << 24))
    for _ in range(4):
        y, x = rng.integers(height), rng.integers(width)
        ids[y : y + rng.integers(1, height + 1), x : x + rng.integers(1, width + 1)] = rng.integers(
            1 << 24
        )
    pixels = np.stack([ids & 255, ids >> 8 & 255, ids >> 16], axis=-1)
    if channels == 4:
        pixels = np.dstack([pixels, rng.integers(0, 256, (height, width))])
    return pixels.astype(np.uint8), ids
