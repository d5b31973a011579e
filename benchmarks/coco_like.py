"""Generated COCO-like panoptic data, in the plugin's format and in Detectron2's "separated" one.

Scenes of 480x640 pixels (COCO's usual size): 2-8 stuff regions with irregular borders, then
thing instances painted one over the other (so that they touch and hide each other), of sizes
spread over two orders of magnitude (radius 3-160 px: many small ones, as in COCO), wavy
outlines, elongated and rotated, some crossing the image border, some with a 1-2 px void ring,
and in about a third of the images one crowd region. COCO's 133 categories and Detectron2's
"separated" metadata. Segment ids are random 24-bit values, as COCO's colours give.

Written per image: a JPEG (quality 90), the COCO-panoptic PNG, and for Detectron2's route the
files that ``prepare_panoptic_fpn.py`` and the COCO instances JSON would give: a stuff-only
semantic PNG (0 things, stuff 1..53, 255 void) and polygon instances (contours simplified to
~1 px, as COCO's annotations are polygons).
"""

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, _get_builtin_metadata
from detectron2.structures import BoxMode
from PIL import Image

from panoptic_fpn_ext.data import id2rgb, load_coco_panoptic_json

IMAGE_SIZE = (480, 640)
METADATA = _get_builtin_metadata("coco_panoptic_separated")
THING_IDS = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]
STUFF_IDS = [c["id"] for c in COCO_CATEGORIES if not c["isthing"]]
IGNORE = 255


def _stuff_labels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """int64 (H, W): the nearest of 2-8 random seeds, under a smooth random distortion."""
    num = int(rng.integers(2, 9))
    seeds = rng.uniform(0, 1, (num, 2)) * (height, width)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    distance = np.empty((num, height, width), dtype=np.float32)
    for k, (sy, sx) in enumerate(seeds):
        wobble = (
            25
            * np.sin(x / rng.uniform(20, 60) + rng.uniform(0, 6))
            * np.cos(y / rng.uniform(20, 60) + rng.uniform(0, 6))
        )
        distance[k] = np.hypot(y - sy, x - sx) + wobble
    return distance.argmin(axis=0)


def _blob(rng: np.random.Generator, height: int, width: int):
    """A random irregular shape: (bool mask of its box, y0, x0, radius)."""
    radius = float(np.exp(rng.uniform(np.log(3), np.log(160))))
    cy, cx = rng.uniform(-0.05, 1.05) * height, rng.uniform(-0.05, 1.05) * width
    stretch, angle = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi)
    extent = int(radius * 1.6 * max(stretch, 1 / stretch)) + 3
    y0, x0 = max(int(cy) - extent, 0), max(int(cx) - extent, 0)
    y1, x1 = min(int(cy) + extent, height), min(int(cx) + extent, width)
    if y1 <= y0 or x1 <= x0:
        return None
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / np.sqrt(stretch)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * np.sqrt(stretch)
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    outline = 1 + sum(
        rng.uniform(0, 0.3 / k * 2) * np.cos(k * theta + rng.uniform(0, 6)) for k in range(2, 6)
    )
    return rho, radius * outline, y0, x0


def random_scene(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, List]:
    """One scene: int64 ids (H, W) (0 void) and its segments ("id", "category_id" (COCO id),
    "iscrowd", "isthing"), each with at least one pixel."""
    stuff = _stuff_labels(rng, height, width)
    stuff_categories = rng.choice(STUFF_IDS, size=int(stuff.max()) + 1, replace=False)
    labels = stuff.astype(np.int64)  # label k < 100: stuff region k; 100 + n: thing n
    num_things = int(np.clip(rng.lognormal(np.log(36), 0.5), 3, 52))
    crowd = int(rng.integers(num_things)) if rng.uniform() < 0.35 else -1
    for n in range(num_things):
        blob = _blob(rng, height, width)
        if blob is None:
            continue
        rho, limit, y0, x0 = blob
        if n == crowd:
            limit = limit * 2 + 40
        region = labels[y0 : y0 + rho.shape[0], x0 : x0 + rho.shape[1]]
        if rng.uniform() < 0.3:
            region[(rho < limit + rng.uniform(1, 2.5)) & (rho >= limit)] = -1  # void ring
        region[rho < limit] = 100 + n
    segments, ids = [], np.zeros((height, width), dtype=np.int64)
    present = np.unique(labels[labels >= 0])
    segment_ids = rng.choice(np.arange(1, 256**3), size=len(present), replace=False)
    lookup = np.zeros(100 + num_things, dtype=np.int64)
    for label, segment_id in zip(present, segment_ids):
        isthing = bool(label >= 100)
        lookup[label] = segment_id
        category = rng.choice(THING_IDS) if isthing else stuff_categories[label]
        segments.append(
            {
                "id": int(segment_id),
                "category_id": int(category),
                "iscrowd": int(label - 100 == crowd),
                "isthing": isthing,
            }
        )
    ids[labels >= 0] = lookup[labels[labels >= 0]]
    return ids, segments


def render(rng: np.random.Generator, ids: np.ndarray, segments: List[Dict]) -> np.ndarray:
    """uint8 RGB (H, W, 3): a colour per segment, shading and noise."""
    colors = {s["id"]: rng.integers(30, 226, 3) for s in segments}
    palette = np.array([colors.get(i, (0, 0, 0)) for i in np.unique(ids)], dtype=np.float32)
    image = palette[np.unique(ids, return_inverse=True)[1].reshape(ids.shape)]
    height, width = ids.shape
    shade = np.linspace(0.8, 1.1, width, dtype=np.float32)[None, :, None]
    image = image * shade + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO-style polygons of a mask: outer contours simplified to ~1 px; a 1-pixel square for
    a part too small to keep 3 points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2).astype(float)
        if len(points) < 3:
            x, y = contour.reshape(-1, 2)[0]
            points = np.array([[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1]], dtype=float)
        polygons.append(points.reshape(-1).tolist())
    return polygons


def _separated_targets(ids: np.ndarray, segments: List[Dict]) -> Tuple[np.ndarray, List[Dict]]:
    """Detectron2's "separated" targets: the stuff-only semantic map (uint8) and the polygon
    annotations of the non-crowd things."""
    semantic = np.full(ids.shape, IGNORE, dtype=np.uint8)
    annotations = []
    stuff_map = METADATA["stuff_dataset_id_to_contiguous_id"]
    thing_map = METADATA["thing_dataset_id_to_contiguous_id"]
    for segment in segments:
        mask = ids == segment["id"]
        semantic[mask] = 0 if segment["isthing"] else stuff_map[segment["category_id"]]
        if segment["isthing"]:
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
            annotations.append(
                {
                    "bbox": box,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": thing_map[segment["category_id"]],
                    "segmentation": _polygons(mask),
                    "iscrowd": segment["iscrowd"],
                }
            )
    return semantic, annotations


def generate(directory: str, num_images: int, seed: int) -> Tuple[List[Dict], List[Dict]]:
    """Write ``num_images`` scenes under ``directory``; returns (the plugin's records, loaded
    from the COCO-panoptic JSON by its loader; Detectron2's records for its default
    ``DatasetMapper``: "annotations" with polygons and "sem_seg_file_name"), in one order."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "panoptic", "semantic"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    images, annotations, detectron2_records = [], [], []
    for image_id in range(num_images):
        ids, segments = random_scene(rng, *IMAGE_SIZE)
        name = f"{image_id:06d}"
        image_path = os.path.join(directory, "images", name + ".jpg")
        Image.fromarray(render(rng, ids, segments)).save(image_path, quality=90)
        Image.fromarray(id2rgb(ids)).save(os.path.join(directory, "panoptic", name + ".png"))
        semantic, instances = _separated_targets(ids, segments)
        semantic_path = os.path.join(directory, "semantic", name + ".png")
        Image.fromarray(semantic).save(semantic_path)
        height, width = IMAGE_SIZE
        images.append(
            {"id": image_id, "file_name": name + ".jpg", "height": height, "width": width}
        )
        annotations.append(
            {"image_id": image_id, "file_name": name + ".png", "segments_info": segments}
        )
        detectron2_records.append(
            {
                "file_name": image_path,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": instances,
                "sem_seg_file_name": semantic_path,
            }
        )
    panoptic_json = os.path.join(directory, "panoptic.json")
    with open(panoptic_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}, f)
    plugin_records = load_coco_panoptic_json(
        panoptic_json,
        os.path.join(directory, "images"),
        os.path.join(directory, "panoptic"),
        METADATA,
    )
    return plugin_records, detectron2_records
