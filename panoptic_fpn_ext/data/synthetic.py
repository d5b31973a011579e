"""The bundled synthetic panoptic dataset "shapes", written in exact COCO panoptic format.

Each image shows three stuff classes (sky above a wavy horizon, ground below it, an irregular
water region in the ground), a few void blobs, and thing instances of three classes (circle,
square, triangle) of varied sizes and rotations that overlap each other and may be cut by the
image border; some images also hold a crowd region (a cluster of small shapes of one class
annotated as one segment with ``iscrowd`` 1). Thing classes have distinct colors and every
segment border is darkened, so a small model learns the task in minutes on a CPU.

Layout under ``root`` for a split (the same as COCO's)::

    {split}/000001.jpg ...                      images (JPEG, quality 95)
    panoptic_{split}/000001.png ...             panoptic PNGs (id = R + 256 G + 256² B)
    annotations/panoptic_{split}.json           images, annotations (segments_info), categories
    annotations/instances_{split}.json          COCO instances (RLE masks, iscrowd) of the things

Generation is deterministic: the same arguments give byte-identical files. A split is written to
a temporary directory and moved into place with its panoptic JSON last, so an interrupted
generation never leaves a split that looks complete.
"""

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import zlib
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .coco_panoptic import load_coco_panoptic_json, panoptic_metadata_from_categories
from .panoptic_io import VOID_ID, id2rgb

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_IMAGE_SIZE",
    "SHAPES_SEED",
    "SHAPES_SPLIT_SIZES",
    "ensure_shapes_dataset",
    "generate_shapes_dataset",
    "load_shapes_dataset",
    "random_shapes_scene",
    "shapes_metadata",
    "shapes_paths",
]

CIRCLE, SQUARE, TRIANGLE, SKY, GROUND, WATER = 1, 2, 3, 11, 12, 13
SHAPES_CATEGORIES = [
    {
        "id": CIRCLE,
        "name": "circle",
        "isthing": 1,
        "color": [220, 20, 60],
        "supercategory": "shape",
    },
    {
        "id": SQUARE,
        "name": "square",
        "isthing": 1,
        "color": [250, 190, 20],
        "supercategory": "shape",
    },
    {
        "id": TRIANGLE,
        "name": "triangle",
        "isthing": 1,
        "color": [150, 60, 220],
        "supercategory": "shape",
    },
    {"id": SKY, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "scene"},
    {
        "id": GROUND,
        "name": "ground",
        "isthing": 0,
        "color": [140, 110, 70],
        "supercategory": "scene",
    },
    {"id": WATER, "name": "water", "isthing": 0, "color": [0, 80, 200], "supercategory": "scene"},
]
THING_IDS = (CIRCLE, SQUARE, TRIANGLE)

# The registered panoptic_fpn_ext_shapes_{train,val}: image size (H, W) in pixels, images per
# split, seed.
SHAPES_IMAGE_SIZE = (128, 128)
SHAPES_SPLIT_SIZES = {"train": 500, "val": 100}
SHAPES_SEED = 0

# Bump when the generator's output changes, so that existing copies are regenerated.
_GENERATOR_VERSION = 1
_JPEG_QUALITY = 95
# Segment id = category id * _ID_STRIDE + instance number (0 for stuff): readable, and the ids
# use all three channels of the PNG.
_ID_STRIDE = 100_000
# Thing segments whose visible area ends below this many pixels are not kept.
_MIN_THING_AREA = 20
# Mean image color of each thing class (RGB); instances vary around it.
_THING_RGB = {CIRCLE: (215, 50, 50), SQUARE: (235, 200, 40), TRIANGLE: (185, 70, 215)}


class _Grid:
    """Pixel-center coordinates of an image: ``y``, ``x`` float32 arrays (H, W)."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.y, self.x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5


def _wobbly_disk(grid: _Grid, rng: np.random.Generator, cy: float, cx: float, r: float):
    """bool (H, W): a disk of mean radius ``r`` (pixels) whose radius varies with the angle."""
    theta = np.arctan2(grid.y - cy, grid.x - cx)
    radius = np.full_like(theta, r)
    for k in (2, 3, 5):
        radius += r * rng.uniform(0.05, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(grid.y - cy, grid.x - cx) < radius


def _stuff_map(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """int64 (H, W): stuff category id of every pixel, or VOID_ID for the void blobs."""
    h, w = grid.height, grid.width
    horizon = np.full(w, h * rng.uniform(0.25, 0.55), dtype=np.float32)
    for _ in range(3):
        amplitude, cycles = rng.uniform(1, 0.05 * h), rng.uniform(0.5, 3.0)
        horizon += amplitude * np.sin(2 * np.pi * cycles * grid.x[0] / w + rng.uniform(0, 7))
    stuff = np.where(grid.y < horizon, SKY, GROUND)
    if rng.random() < 0.75:
        cy = rng.uniform(horizon.mean() + 0.15 * h, 0.95 * h)
        water = _wobbly_disk(grid, rng, cy, rng.uniform(0.15, 0.85) * w, rng.uniform(0.12, 0.3) * w)
        stuff[water & (stuff == GROUND)] = WATER
    for _ in range(rng.integers(0, 3)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        stuff[_wobbly_disk(grid, rng, cy, cx, rng.uniform(2, 6))] = VOID_ID
    return stuff


def _shape_mask(grid: _Grid, category: int, cy: float, cx: float, r: float, angle: float):
    """bool (H, W): a circle of radius ``r``, or a square / equilateral triangle of circumradius
    ``r``, centered at (cy, cx) and rotated by ``angle`` (radians); all in pixels."""
    dy, dx = grid.y - cy, grid.x - cx
    if category == CIRCLE:
        return np.hypot(dy, dx) <= r
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if category == SQUARE:
        half = r / np.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Triangle: inside the three half-planes at distance r / 2 from the center.
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        phi = angle + k * 2 * np.pi / 3
        inside &= np.cos(phi) * dx + np.sin(phi) * dy <= r / 2
    return inside


def _random_shape(grid: _Grid, rng: np.random.Generator, category: int, cy, cx, r) -> np.ndarray:
    return _shape_mask(grid, category, cy, cx, r, rng.uniform(0, 2 * np.pi))


def _thing_layers(grid: _Grid, rng: np.random.Generator) -> List[Tuple[int, int, np.ndarray]]:
    """Thing segments in painting order (later ones occlude earlier ones).

    Returns:
        (category id, iscrowd, bool mask (H, W)) per segment, before occlusion.
    """
    h, w = grid.height, grid.width
    layers = []
    if rng.random() < 0.2:  # a crowd: a cluster of small shapes of one class, one segment
        category = int(rng.choice(THING_IDS))
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        crowd = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(5, 10)):
            oy, ox = rng.uniform(-0.1, 0.1, size=2) * (h, w)
            crowd |= _random_shape(grid, rng, category, cy + oy, cx + ox, rng.uniform(3, 6))
        layers.append((category, 1, crowd))
    for _ in range(rng.integers(1, 7)):
        category = int(rng.choice(THING_IDS))
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        r = rng.uniform(0.05, 0.22) * min(h, w)
        layers.append((category, 0, _random_shape(grid, rng, category, cy, cx, r)))
    return layers


def _panoptic_scene(grid: _Grid, rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict]]:
    """A random scene.

    Returns:
        int64 (H, W) segment id map (0 = void) and the segments: "id", "category_id", "iscrowd".
    """
    stuff = _stuff_map(grid, rng)
    ids = np.where(stuff == VOID_ID, VOID_ID, stuff * _ID_STRIDE)
    owner = np.full(ids.shape, -1)
    layers = _thing_layers(grid, rng)
    for index, (_, _, mask) in enumerate(layers):
        owner[mask] = index
    things, counts = [], {c: 0 for c in THING_IDS}
    for index, (category, iscrowd, _) in enumerate(layers):
        visible = owner == index
        if visible.sum() < _MIN_THING_AREA:
            continue  # its pixels keep their stuff (or void) segment
        counts[category] += 1
        segment_id = category * _ID_STRIDE + counts[category]
        ids[visible] = segment_id
        things.append({"id": segment_id, "category_id": category, "iscrowd": iscrowd})
    stuff_segments = [
        {"id": c * _ID_STRIDE, "category_id": c, "iscrowd": 0}
        for c in (SKY, GROUND, WATER)
        if (ids == c * _ID_STRIDE).any()
    ]
    return ids, stuff_segments + things


def _render(ids: np.ndarray, segments: List[Dict], grid: _Grid, rng: np.random.Generator):
    """uint8 (H, W, 3) RGB image of a scene: textured stuff, colored things, dark borders."""
    h, w = grid.height, grid.width
    y, x = grid.y[..., None], grid.x[..., None]
    image = np.empty((h, w, 3), dtype=np.float32)
    for segment in segments:
        mask, category = ids == segment["id"], segment["category_id"]
        if category == SKY:
            color = np.array([120, 170, 230]) - 60 * (y / h) * np.array([1, 0.6, 0.2])
        elif category == GROUND:
            phase = rng.uniform(0, 7)
            color = np.array([115, 95, 60]) + 18 * np.sin(0.35 * x + 0.2 * y + phase)
        elif category == WATER:
            color = np.array([40, 85, 175]) + 22 * np.sin(0.9 * y + 0.8 * np.sin(0.15 * x))
        else:
            rgb = np.array(_THING_RGB[category]) + rng.uniform(-30, 30, size=3)
            color = rgb * (0.85 + 0.3 * ((x + y) / (h + w)))
        image[mask] = np.broadcast_to(color, (h, w, 3))[mask]
    void = ids == VOID_ID
    image[void] = rng.uniform(60, 200, size=(int(void.sum()), 1))
    border = np.zeros((h, w), dtype=bool)
    border[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    border[:-1, :] |= ids[:-1, :] != ids[1:, :]
    image[border] *= 0.5
    image += rng.normal(0, 5, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def random_shapes_scene(
    height: int, width: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
    """One random "shapes" scene, as the dataset's images are drawn (for benchmarks and tests).

    Returns:
        uint8 (H, W, 3) RGB image, int64 (H, W) segment id map (0 = void), and the segments
        ("id", "category_id" as in :data:`SHAPES_CATEGORIES`, "iscrowd").
    """
    grid = _Grid(height, width)
    ids, segments = _panoptic_scene(grid, rng)
    return _render(ids, segments, grid, rng), ids, segments


def _segment_annotations(ids: np.ndarray, segment: Dict) -> Tuple[Dict, Dict]:
    """The COCO-panoptic segment info and the COCO RLE of one segment."""
    rle = mask_util.encode(np.asfortranarray((ids == segment["id"]).astype(np.uint8)))
    area = int(mask_util.area(rle))
    bbox = [int(v) for v in mask_util.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {**segment, "area": area, "bbox": bbox}, rle


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _info(split: str, num_images: int, image_size: Tuple[int, int], seed: int) -> Dict[str, Any]:
    return {
        "description": "panoptic_fpn_ext synthetic shapes",
        "version": _GENERATOR_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": list(image_size),
        "seed": seed,
    }


def _dump_json(data: Dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)


def _write_split(directory: str, split: str, num_images: int, image_size, seed: int) -> None:
    """Write the split's images, PNGs and both JSONs under ``directory`` (COCO layout)."""
    h, w = image_size
    grid = _Grid(h, w)
    for sub in (split, f"panoptic_{split}"):
        os.makedirs(os.path.join(directory, sub))
    images, panoptic_anns, instance_anns = [], [], []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng([seed, _split_key(split), image_id])
        ids, segments = _panoptic_scene(grid, rng)
        name = f"{image_id:06d}"
        Image.fromarray(_render(ids, segments, grid, rng)).save(
            os.path.join(directory, split, f"{name}.jpg"), format="JPEG", quality=_JPEG_QUALITY
        )
        Image.fromarray(id2rgb(ids)).save(
            os.path.join(directory, f"panoptic_{split}", f"{name}.png"), format="PNG"
        )
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": h, "width": w})
        segments_info = []
        for segment in segments:
            info, rle = _segment_annotations(ids, segment)
            segments_info.append(info)
            if segment["category_id"] in THING_IDS:
                instance_anns.append(
                    {
                        "id": len(instance_anns) + 1,
                        "image_id": image_id,
                        "category_id": info["category_id"],
                        "segmentation": rle,
                        "area": float(info["area"]),
                        "bbox": [float(v) for v in info["bbox"]],
                        "iscrowd": info["iscrowd"],
                    }
                )
        panoptic_anns.append(
            {"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments_info}
        )
    info = _info(split, num_images, image_size, seed)
    things = [
        {k: c[k] for k in ("id", "name", "supercategory")}
        for c in SHAPES_CATEGORIES
        if c["isthing"]
    ]
    _dump_json(
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": instance_anns,
            "categories": things,
        },
        os.path.join(directory, f"instances_{split}.json"),
    )
    _dump_json(
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": panoptic_anns,
            "categories": SHAPES_CATEGORIES,
        },
        os.path.join(directory, f"panoptic_{split}.json"),
    )


def shapes_paths(root: str, split: str) -> Dict[str, str]:
    """Paths of a split: "image_root", "panoptic_root", "panoptic_json", "instances_json"."""
    return {
        "image_root": os.path.join(root, split),
        "panoptic_root": os.path.join(root, f"panoptic_{split}"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _install(tmp: str, root: str, split: str) -> None:
    """Move a split written under ``tmp`` into ``root``; its panoptic JSON goes in last."""
    paths = shapes_paths(root, split)
    if os.path.exists(paths["panoptic_json"]):
        os.remove(paths["panoptic_json"])  # the split is incomplete from here until the end
    for key in ("image_root", "panoptic_root"):
        if os.path.exists(paths[key]):
            shutil.rmtree(paths[key])
        os.replace(os.path.join(tmp, os.path.basename(paths[key])), paths[key])
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    for key in ("instances_json", "panoptic_json"):
        os.replace(os.path.join(tmp, os.path.basename(paths[key])), paths[key])


@contextlib.contextmanager
def _split_lock(root: str, split: str) -> Iterator[None]:
    """Exclusive lock on a split, so that concurrent processes do not generate it twice."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{split}.lock"), "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate_locked(root: str, split: str, num_images: int, image_size, seed: int) -> None:
    tmp = tempfile.mkdtemp(dir=root, prefix=f".{split}-")
    try:
        _write_split(tmp, split, num_images, image_size, seed)
        _install(tmp, root, split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_arguments(split: str, num_images: int, image_size: Tuple[int, int]) -> None:
    if not split or os.sep in split or split.startswith("."):
        raise ValueError(f"split {split!r}: expected a plain directory name such as 'train'")
    if num_images < 1:
        raise ValueError(f"num_images = {num_images}: expected at least 1")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size = {image_size}: expected (H, W), each at least 16 pixels")


def generate_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    image_size: Tuple[int, int] = SHAPES_IMAGE_SIZE,
    seed: int = SHAPES_SEED,
) -> Dict[str, str]:
    """Write (or overwrite) one split of the shapes dataset under ``root``.

    Args:
        root: dataset directory; the split goes to ``root/{split}``, ``root/panoptic_{split}``
            and ``root/annotations/{panoptic,instances}_{split}.json``.
        split: split name, e.g. "train".
        num_images: number of images, with ids 1..num_images.
        image_size: (H, W) in pixels.
        seed: with ``split``, determines every file.
    Returns:
        the split's paths (see :func:`shapes_paths`).
    """
    _check_arguments(split, num_images, image_size)
    with _split_lock(root, split):
        _generate_locked(root, split, num_images, tuple(image_size), seed)
    return shapes_paths(root, split)


def _is_complete(path: str, expected_info: Dict[str, Any]) -> bool:
    """Whether the panoptic JSON exists and was written with the expected arguments."""
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("info") == expected_info


def ensure_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    image_size: Tuple[int, int] = SHAPES_IMAGE_SIZE,
    seed: int = SHAPES_SEED,
) -> Dict[str, str]:
    """Like :func:`generate_shapes_dataset`, but only if the split is absent, incomplete, or was
    generated with other arguments or by another version of the generator."""
    _check_arguments(split, num_images, image_size)
    paths = shapes_paths(root, split)
    expected = _info(split, num_images, tuple(image_size), seed)
    with _split_lock(root, split):
        if not _is_complete(paths["panoptic_json"], expected):
            _generate_locked(root, split, num_images, tuple(image_size), seed)
    return paths


def shapes_metadata() -> Dict[str, Any]:
    """Separated-convention class metadata of the shapes dataset (3 things, 3 stuff)."""
    return panoptic_metadata_from_categories(SHAPES_CATEGORIES, "SHAPES_CATEGORIES")


def load_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    image_size: Tuple[int, int] = SHAPES_IMAGE_SIZE,
    seed: int = SHAPES_SEED,
) -> List[Dict[str, Any]]:
    """Dataset dicts of a shapes split, generating it first when needed (see
    :func:`ensure_shapes_dataset` and ``load_coco_panoptic_json``)."""
    paths = ensure_shapes_dataset(root, split, num_images, image_size, seed)
    return load_coco_panoptic_json(
        paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], shapes_metadata()
    )
