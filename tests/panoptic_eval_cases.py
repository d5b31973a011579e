"""Panoptic evaluation test data: GT/prediction id maps, their files, the reference PQ.

Three references, each reading COCO-panoptic files (every case is written as GT and prediction
JSON + PNG folders): COCO's ``panopticapi.evaluation`` (the reference implementation, which
Detectron2's COCOPanopticEvaluator calls), cityscapesscripts' ``evalPanopticSemanticLabeling``
(the same algorithm) and hotcoco's ``pq_compute`` (a Rust reimplementation).
"""

import contextlib
import io
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
import panopticapi.evaluation
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cityscapes_reference
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
from PIL import Image

from float_reference import pq_tolerance, within
from panoptic_fpn_ext.data import id2rgb, panoptic_metadata_from_categories
from panoptic_fpn_ext.data.coco_panoptic import register_coco_panoptic_dataset
from panoptic_fpn_ext.evaluation import (
    PQStatistics,
    image_pq_statistics,
    pq_per_category,
    pq_summary,
    segments_from_info,
)

# 4 thing and 4 stuff categories with non-contiguous dataset ids; the category index of the
# evaluation is the position in this list (things first, then stuff).
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 4, "name": "dog", "isthing": 1},
    {"id": 7, "name": "bike", "isthing": 1},
    {"id": 20, "name": "road", "isthing": 0},
    {"id": 21, "name": "sky", "isthing": 0},
    {"id": 25, "name": "grass", "isthing": 0},
    {"id": 30, "name": "wall", "isthing": 0},
]
NUM_THINGS, NUM_STUFF = 4, 4
NUM_CATEGORIES = NUM_THINGS + NUM_STUFF
METADATA = panoptic_metadata_from_categories(CATEGORIES)
ISTHING = np.array([bool(c["isthing"]) for c in CATEGORIES])


def segment(segment_id: int, index: int, iscrowd: int = 0) -> Dict:
    """A segments_info entry (contiguous ids) of the category at ``index`` of CATEGORIES."""
    isthing = index < NUM_THINGS
    category_id = index if isthing else index - NUM_THINGS + 1
    return {"id": segment_id, "category_id": category_id, "isthing": isthing, "iscrowd": iscrowd}


@dataclass
class PanopticImage:
    """One image of a case: GT and predicted id maps (int (H, W), 0 = void) and segments."""

    image_id: int
    gt_ids: np.ndarray
    gt_segments: List[Dict]
    pred_ids: np.ndarray
    pred_segments: List[Dict]


def dataset_category_id(seg: Dict) -> int:
    index = seg["category_id"] if seg["isthing"] else NUM_THINGS + seg["category_id"] - 1
    return CATEGORIES[index]["id"]


def _annotation(image_id: int, file_name: str, ids: np.ndarray, segments: List[Dict]) -> Dict:
    infos = []
    for seg in segments:
        infos.append(
            {
                "id": seg["id"],
                "category_id": dataset_category_id(seg),
                "iscrowd": seg.get("iscrowd", 0),
                "area": int((ids == seg["id"]).sum()),
            }
        )
    return {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def write_panoptic(root: str, stem: str, images: Sequence[PanopticImage], side: str) -> str:
    """Write ``root/stem.json`` and ``root/stem/<image_id>.png`` of the "gt" or "pred" side.

    Returns:
        the JSON's path.
    """
    folder = os.path.join(root, stem)
    os.makedirs(folder, exist_ok=True)
    annotations, entries = [], []
    for image in images:
        ids, segments = (
            (image.gt_ids, image.gt_segments)
            if side == "gt"
            else (image.pred_ids, image.pred_segments)
        )
        file_name = f"{image.image_id}.png"
        Image.fromarray(id2rgb(ids)).save(os.path.join(folder, file_name))
        annotations.append(_annotation(image.image_id, file_name, ids, segments))
        height, width = ids.shape
        entries.append(
            {
                "id": image.image_id,
                "file_name": f"{image.image_id}.jpg",
                "height": height,
                "width": width,
            }
        )
    path = os.path.join(root, f"{stem}.json")
    with open(path, "w") as f:
        json.dump({"images": entries, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


# The reference implementations, by name.
REFERENCES = ("panopticapi", "cityscapesscripts", "hotcoco")
_PYTHON_REFERENCES = {
    "panopticapi": panopticapi.evaluation,
    "cityscapesscripts": cityscapes_reference,
}


def reference_pq(
    root: str,
    images: Sequence[PanopticImage],
    multi_core: bool = False,
    implementation: str = "cityscapesscripts",
) -> Dict:
    """The reference results of a case: {"All"/"Things"/"Stuff": {pq, sq, rq, n}, "per_class"}.

    ``implementation`` is one of REFERENCES. For panopticapi and cityscapesscripts,
    ``multi_core`` runs their ``pq_compute`` / ``evaluatePanoptic`` itself (a process pool);
    otherwise see :func:`reference_pq_of_files`. hotcoco's ``pq_compute`` runs in this process.
    """
    gt_json = write_panoptic(root, "gt", images, "gt")
    pred_json = write_panoptic(root, "pred", images, "pred")
    gt_dir, pred_dir = os.path.join(root, "gt"), os.path.join(root, "pred")
    with contextlib.redirect_stdout(io.StringIO()):
        if implementation == "hotcoco":
            return _from_hotcoco(hotcoco_pq_compute(gt_json, pred_json, gt_dir, pred_dir))
        if not multi_core:
            module = _PYTHON_REFERENCES[implementation]
            return reference_pq_of_files(gt_json, gt_dir, pred_json, pred_dir, module)
        if implementation == "panopticapi":
            return panopticapi.evaluation.pq_compute(gt_json, pred_json, gt_dir, pred_dir)
        results_file = os.path.join(root, "reference_results.json")
        return cityscapes_reference.evaluatePanoptic(
            gt_json, gt_dir, pred_json, pred_dir, results_file
        )


def reference_pq_of_files(
    gt_json: str, gt_dir: str, pred_json: str, pred_dir: str, module=cityscapes_reference
) -> Dict:
    """The reference results of COCO-panoptic files, computed in this process by the reference's
    per-image function ``pq_compute_single_core`` and its averaging (``module``: panopticapi's
    or cityscapesscripts')."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = module.pq_compute_single_core(0, pairs, gt_dir, pred_dir, categories)
    return _average_pq(stat, categories)


def _from_hotcoco(results: Dict) -> Dict:
    """hotcoco's results in the references' form: a group without any counted category is
    ``{"n": 0}`` and a category without segments scores 0.0 (hotcoco reports -1 for both)."""
    converted = {"per_class": {}}
    for group in ("All", "Things", "Stuff"):
        counted = results[group]["n"] > 0
        converted[group] = dict(results[group]) if counted else {"n": 0}
    for category, values in results["per_class"].items():
        counted = values["tp"] + values["fp"] + values["fn"] > 0
        converted["per_class"][category] = {
            metric: values[metric] if counted else 0.0 for metric in ("pq", "sq", "rq")
        }
    return converted


def _average_pq(stat, categories: Dict) -> Dict:
    """The reference's ``pq_average``, except that a group without any counted category gets
    ``{"n": 0}`` where the reference raises ZeroDivisionError."""
    results = {"per_class": {c: {"pq": 0.0, "sq": 0.0, "rq": 0.0} for c in categories}}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            results[name] = {"n": 0}
            continue
        if name == "All":
            results["per_class"] = per_class
    return results


def our_statistics(images: Sequence[PanopticImage], device: str = "cpu") -> PQStatistics:
    """The plugin's statistics of a case, summed over its images."""
    total = PQStatistics.zeros(NUM_CATEGORIES)
    for image in images:
        gt = segments_from_info(image.gt_segments, NUM_THINGS, NUM_STUFF, "gt")
        pred = segments_from_info(image.pred_segments, NUM_THINGS, NUM_STUFF, "pred")
        statistics = image_pq_statistics(
            torch.as_tensor(image.gt_ids, dtype=torch.int32),
            gt,
            torch.as_tensor(image.pred_ids, dtype=torch.int32, device=device),
            pred,
            NUM_CATEGORIES,
            f"image {image.image_id}",
        )
        total = total + statistics
    return total


def assert_matches_reference(
    statistics: PQStatistics, expected: Dict, tol: float = pq_tolerance()
) -> None:
    """Every PQ/SQ/RQ number (All/Things/Stuff and per class) and category count equal the
    reference's; classes the reference reports as 0 for lack of segments, and groups where it
    divides by zero, are NaN here."""
    summary = pq_summary(statistics, ISTHING)
    for group in ("All", "Things", "Stuff"):
        assert summary[group]["n"] == expected[group]["n"], group
        for metric in ("pq", "sq", "rq"):
            if expected[group]["n"] == 0:
                assert np.isnan(summary[group][metric]), (group, metric)
            else:
                difference = abs(summary[group][metric] - expected[group][metric])
                assert within("PQ/SQ/RQ vs reference", difference, tol), (group, metric)
    per_category = pq_per_category(statistics)
    for index, category in enumerate(CATEGORIES):
        reference_class = expected["per_class"][category["id"]]
        for metric in ("pq", "sq", "rq"):
            ours = per_category[metric][index]
            if per_category["counted"][index]:
                difference = abs(ours - reference_class[metric])
                assert within("PQ/SQ/RQ vs reference", difference, tol), category["name"]
            else:
                assert np.isnan(ours) and reference_class[metric] == 0.0, category["name"]


def register_case_dataset(name: str, root: str, images: Sequence[PanopticImage]):
    """Register the GT of a case as a COCO-panoptic dataset (with stand-in image files)."""
    write_panoptic(root, "gt", images, "gt")
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    for image in images:
        Image.new("RGB", image.gt_ids.shape[::-1]).save(
            os.path.join(image_root, f"{image.image_id}.jpg")
        )
    return register_coco_panoptic_dataset(
        name, image_root, os.path.join(root, "gt"), os.path.join(root, "gt.json")
    )


def model_output(image: PanopticImage, device: str = "cpu") -> Dict:
    """Detectron2's model output for an image of a case: {"panoptic_seg": (ids, segments_info)}."""
    ids = torch.as_tensor(image.pred_ids, dtype=torch.int32, device=device)
    info = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in image.pred_segments]
    return {"panoptic_seg": (ids, info)}


def model_input(image: PanopticImage, root: str) -> Dict:
    height, width = image.gt_ids.shape
    return {
        "image_id": image.image_id,
        "file_name": os.path.join(root, "images", f"{image.image_id}.jpg"),
        "height": height,
        "width": width,
    }


def random_image(
    rng: np.random.Generator, image_id: int, height: int = 24, width: int = 32
) -> PanopticImage:
    """A random image: blocky GT segments of random categories (some crowd), void, and a
    prediction that copies the GT with moved boundaries, swapped categories, split and spurious
    segments, so that IoUs spread around 0.5."""
    gt_ids = _blocks(rng, height, width, rng.integers(1, 9), max_id=rng.choice([50, 1 << 20]))
    gt_segments = []
    for seg_id in np.unique(gt_ids[gt_ids > 0]).tolist():
        index = int(rng.integers(0, NUM_CATEGORIES))
        crowd = int(index < NUM_THINGS and rng.random() < 0.25)
        gt_segments.append(segment(seg_id, index, crowd))
    pred_ids = _perturbed(rng, gt_ids)
    pred_segments = []
    by_id = {s["id"]: s for s in gt_segments}
    for new_id, seg_id in enumerate(np.unique(pred_ids[pred_ids > 0]).tolist(), start=1):
        if seg_id in by_id and rng.random() < 0.8:
            seg = segment(new_id, _index(by_id[seg_id]))
        else:
            seg = segment(new_id, int(rng.integers(0, NUM_CATEGORIES)))
        pred_segments.append(seg)
        pred_ids[pred_ids == seg_id] = -new_id
    return PanopticImage(image_id, gt_ids, gt_segments, -pred_ids, pred_segments)


def _index(seg: Dict) -> int:
    return seg["category_id"] if seg["isthing"] else NUM_THINGS + seg["category_id"] - 1


def _blocks(rng, height: int, width: int, count: int, max_id: int) -> np.ndarray:
    ids = np.zeros((height, width), dtype=np.int64)
    for seg_id in rng.choice(np.arange(1, max_id), size=count, replace=False):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(2, height + 1), rng.integers(2, width + 1)
        ids[y0 : y0 + h, x0 : x0 + w] = seg_id
    return ids


def _perturbed(rng, gt_ids: np.ndarray) -> np.ndarray:
    """The GT map shifted by up to 3 pixels, with random blocks (new, void or other ids) on top."""
    dy, dx = rng.integers(-3, 4, size=2)
    pred = np.roll(gt_ids, (dy, dx), axis=(0, 1))
    height, width = gt_ids.shape
    for _ in range(rng.integers(0, 4)):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(1, height // 2 + 1), rng.integers(1, width // 2 + 1)
        pred[y0 : y0 + h, x0 : x0 + w] = rng.choice([0, 1 << 21, 1 + int(rng.integers(0, 1 << 20))])
    return pred
