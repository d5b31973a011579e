"""PQ evaluation speed and memory: PanopticQualityEvaluator vs Detectron2's COCOPanopticEvaluator.

    python benchmarks/bench_pq_eval.py [--num-images 200] [--image-size 480 640] [--repeats 3]

Generates, once, in a temporary directory, a synthetic COCO-panoptic dataset (133 categories as in
COCO: 80 things, 53 stuff; irregular stuff regions, 5-30 elliptic things with 5% crowd, void on
segment borders) and predictions that look like a model's: the GT warped by a smooth displacement
of a few pixels, 10% of the segments with another category, 10% of the things dropped, 3
spurious things, segment ids 1..K. Then, in one run, on the same predictions:

(a) Detectron2's route: its ``COCOPanopticEvaluator`` itself (encode every prediction to PNG in
    ``process``, write the PNGs and the JSON in ``evaluate``, then ``pq_compute``). Detectron2
    imports ``id2rgb`` and ``pq_compute`` from panopticapi, which is not on PyPI; they are supplied
    here by the project's ``id2rgb`` (the same arithmetic) and cityscapesscripts'
    ``evaluatePanoptic`` (the same algorithm as panopticapi's ``pq_compute``, also one process per
    core);
(b) the plugin: ``PanopticQualityEvaluator.process`` on each in-memory prediction, then
    ``evaluate`` (with its default 2 threads, and with 1);
(c) hotcoco's ``pq_compute`` (Rust) on the prediction files, and the reference ``pq_compute``
    alone on the same files, without (a)'s encoding.

All four results are checked equal (PQ/SQ/RQ of All, Things, Stuff, to 1e-9). The peak resident
memory added by (a) and (b) is measured in fresh processes for N and 2N images (predictions read
from files one at a time there, so that they do not count; Linux only: /proc/self/clear_refs).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import types
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from PIL import Image

from common import (
    command_line,
    PROBE_MMAP_THRESHOLD,
    in_fresh_process,
    machine_description,
    median_seconds,
    reset_peak_rss,
    status_kib,
    update_benchmarks_md,
)
from panoptic_fpn_ext.data import id2rgb, register_coco_panoptic_dataset, rgb2id
from panoptic_fpn_ext.evaluation import PanopticExporter, PanopticQualityEvaluator
from panoptic_fpn_ext.evaluation.png import decode_rgba, read_filtered_png

NUM_THINGS, NUM_STUFF = 80, 53
CATEGORIES = [{"id": k + 1, "name": f"thing{k}", "isthing": 1} for k in range(NUM_THINGS)] + [
    {"id": NUM_THINGS + k + 1, "name": f"stuff{k}", "isthing": 0} for k in range(NUM_STUFF)
]
METRICS = [(group, metric) for group in ("All", "Things", "Stuff") for metric in ("pq", "sq", "rq")]


# ---------------------------------------------------------------- synthetic data


def _warped_grid(rng: np.random.Generator, height: int, width: int, amplitude: float):
    """Pixel coordinates displaced by a smooth random field of about ``amplitude`` pixels."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, 4)
    periods = rng.uniform(15, 60, 4)
    dy = amplitude * (np.sin(xs / periods[0] + phases[0]) + np.sin(ys / periods[1] + phases[1]))
    dx = amplitude * (np.sin(ys / periods[2] + phases[2]) + np.sin(xs / periods[3] + phases[3]))
    wy = np.clip(ys + dy, 0, height - 1).astype(np.int64)
    wx = np.clip(xs + dx, 0, width - 1).astype(np.int64)
    return wy, wx


def _scene(rng: np.random.Generator, height: int, width: int):
    """A clean segment map (int64 (H, W), segment index 0..K-1) and each segment's
    (category index, iscrowd); categories 0..79 things, 80..132 stuff."""
    cell = 96
    stuff = NUM_THINGS + rng.choice(NUM_STUFF, size=6, replace=False)
    coarse = rng.choice(stuff, size=(height // cell + 2, width // cell + 2))
    wy, wx = _warped_grid(rng, height, width, 20.0)
    category_map = coarse[wy // cell, wx // cell]
    present = np.unique(category_map)
    index_map = np.searchsorted(present, category_map)
    segments = [(int(c), 0) for c in present]
    ys, xs = np.ogrid[0:height, 0:width]
    for _ in range(rng.integers(5, 31)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(6, height / 5), rng.uniform(6, width / 5)
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        index_map[inside] = len(segments)
        segments.append((int(rng.integers(NUM_THINGS)), int(rng.random() < 0.05)))
    return index_map, segments


def _renumber(index_map: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Id map of an index map (index -1 = void), and which indices remain in it."""
    present = np.zeros(len(ids) + 1, dtype=bool)
    present[np.unique(index_map) + 1] = True
    id_map = np.concatenate([[0], ids])[index_map + 1]
    return id_map, present[1:]


def make_image(rng: np.random.Generator, height: int, width: int):
    """GT (id map, segments_info in dataset ids) and prediction (int32 id map, segments_info in
    contiguous ids with "isthing") of one synthetic image."""
    index_map, segments = _scene(rng, height, width)
    gt_index = index_map.copy()
    border = np.zeros_like(index_map, dtype=bool)
    border[:-1] |= index_map[:-1] != index_map[1:]
    border[:, :-1] |= index_map[:, :-1] != index_map[:, 1:]
    gt_index[border] = -1
    gt_ids = rng.choice(np.arange(1, 1 << 24), size=len(segments), replace=False)
    gt_map, gt_present = _renumber(gt_index, gt_ids)
    gt_info = [
        {"id": int(gt_ids[k]), "category_id": CATEGORIES[c]["id"], "iscrowd": crowd}
        for k, (c, crowd) in enumerate(segments)
        if gt_present[k]
    ]
    for info in gt_info:
        info["area"] = int((gt_map == info["id"]).sum())

    wy, wx = _warped_grid(rng, height, width, 3.0)
    pred_index = index_map[wy, wx]
    categories = [c for c, _ in segments]
    for k, category in enumerate(categories):
        draw = rng.random()
        if draw < 0.1:
            categories[k] = int(
                rng.integers(NUM_THINGS)
                if category < NUM_THINGS
                else NUM_THINGS + rng.integers(NUM_STUFF)
            )
        elif draw < 0.2 and category < NUM_THINGS:
            pred_index[pred_index == k] = -1
    ys, xs = np.ogrid[0:height, 0:width]
    for _ in range(3):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        inside = ((ys - cy) / rng.uniform(6, 40)) ** 2 + ((xs - cx) / rng.uniform(6, 40)) ** 2 <= 1
        pred_index[inside] = len(categories)
        categories.append(int(rng.integers(NUM_THINGS)))
    pred_map, pred_present = _renumber(pred_index, np.arange(1, len(categories) + 1))
    kept = np.flatnonzero(pred_present)
    new_ids = np.zeros(len(categories) + 1, dtype=np.int64)
    new_ids[kept + 1] = np.arange(1, len(kept) + 1)
    pred_info = [
        {
            "id": int(new_ids[k + 1]),
            "isthing": categories[k] < NUM_THINGS,
            "category_id": (
                categories[k] if categories[k] < NUM_THINGS else categories[k] - NUM_THINGS + 1
            ),
        }
        for k in kept
    ]
    return gt_map, gt_info, torch.from_numpy(new_ids[pred_map].astype(np.int32)), pred_info


def make_dataset(root: str, num_images: int, height: int, width: int, seed: int = 0) -> List:
    """Write the GT (PNGs, 1x1 stand-in images, and JSON files of the first ``num_images // 2``
    and of all images) and return the predictions [(model input, model output)]."""
    rng = np.random.default_rng(seed)
    for folder in ("gt", "images"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    images, annotations, predictions = [], [], []
    for image_id in range(1, num_images + 1):
        gt_map, gt_info, pred_map, pred_info = make_image(rng, height, width)
        name = f"{image_id:06d}"
        Image.fromarray(id2rgb(gt_map)).save(os.path.join(root, "gt", f"{name}.png"))
        Image.new("RGB", (1, 1)).save(os.path.join(root, "images", f"{name}.jpg"))
        images.append(
            {"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width}
        )
        annotations.append(
            {"image_id": image_id, "file_name": f"{name}.png", "segments_info": gt_info}
        )
        image = {"image_id": image_id, "file_name": os.path.join(root, "images", f"{name}.jpg")}
        predictions.append((image, {"panoptic_seg": (pred_map, pred_info)}))
    for stem, count in (("gt_n", num_images // 2), ("gt_2n", num_images)):
        data = {
            "images": images[:count],
            "annotations": annotations[:count],
            "categories": CATEGORIES,
        }
        with open(os.path.join(root, f"{stem}.json"), "w") as f:
            json.dump(data, f)
    return predictions


def register(root: str, stem: str) -> str:
    """Register ``root/<stem>.json`` as a dataset; returns its name."""
    name = f"bench_pq_eval_{stem}"
    if name not in DatasetCatalog.list():
        register_coco_panoptic_dataset(
            name,
            os.path.join(root, "images"),
            os.path.join(root, "gt"),
            os.path.join(root, f"{stem}.json"),
        )
    return name


# ---------------------------------------------------------------- the routes


def install_panopticapi_stand_in(scratch: str) -> None:
    """Make ``panopticapi.utils.id2rgb`` and ``panopticapi.evaluation.pq_compute``, which
    Detectron2's COCOPanopticEvaluator imports, the project's id2rgb and cityscapesscripts'
    evaluatePanoptic (panopticapi's algorithm and process pool)."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    def pq_compute(gt_json, pred_json, gt_folder, pred_folder):
        results = os.path.join(scratch, "reference_results.json")
        return evaluatePanoptic(gt_json, gt_folder, pred_json, pred_folder, results)

    package = types.ModuleType("panopticapi")
    package.utils = types.ModuleType("panopticapi.utils")
    package.utils.id2rgb = id2rgb
    package.evaluation = types.ModuleType("panopticapi.evaluation")
    package.evaluation.pq_compute = pq_compute
    sys.modules.update(
        {
            "panopticapi": package,
            "panopticapi.utils": package.utils,
            "panopticapi.evaluation": package.evaluation,
        }
    )


def run_detectron2(dataset: str, predictions) -> Dict:
    """(a): COCOPanopticEvaluator over the predictions; {"All"/"Things"/"Stuff": {pq, sq, rq}}."""
    evaluator = COCOPanopticEvaluator(dataset)
    evaluator.reset()
    for image, output in predictions:
        id_map, info = output["panoptic_seg"]
        # process() pops "isthing" from the dicts it is given; give it fresh ones every run.
        evaluator.process([image], [{"panoptic_seg": (id_map, [dict(s) for s in info])}])
    return _from_percent(evaluator.evaluate()["panoptic_seg"])


def run_plugin(dataset: str, predictions, num_threads: int = 2) -> Dict:
    """(b): PanopticQualityEvaluator over the in-memory predictions."""
    evaluator = PanopticQualityEvaluator(dataset, num_threads=num_threads)
    evaluator.reset()
    for image, output in predictions:
        evaluator.process([image], [output])
    return _from_percent(evaluator.evaluate()["panoptic_seg"])


def _from_percent(results: Dict[str, float]) -> Dict:
    suffix = {"All": "", "Things": "_th", "Stuff": "_st"}
    return {g: {m: results[f"{m.upper()}{suffix[g]}"] / 100 for _, m in METRICS} for g in suffix}


def run_file_based(pq_compute: Callable, root: str, files: Dict[str, str]) -> Dict:
    """(c): a panopticapi-style ``pq_compute`` on the GT and exported prediction files."""
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(
            os.path.join(root, "gt_n.json"),
            files["json"],
            os.path.join(root, "gt"),
            files["png_dir"],
        )


def _opencv_decode(path: str) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def _plugin_decode(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return decode_rgba(read_filtered_png(f.read(), path))


def decode_pngs(decode: Callable[[str], np.ndarray], paths: List[str]) -> None:
    """Read and decode every GT PNG with ``decode``, on one thread."""
    for path in paths:
        decode(path)


def export_predictions(dataset: str, predictions, output_dir: str) -> Dict[str, str]:
    """Write the predictions in COCO panoptic format; returns the JSON path and PNG folder."""
    from detectron2.data import MetadataCatalog

    exporter = PanopticExporter("coco", output_dir, dataset, MetadataCatalog.get(dataset))
    exporter.finish(
        [exporter.write(image, *output["panoptic_seg"]) for image, output in predictions]
    )
    return exporter.paths


# ---------------------------------------------------------------- memory


def _memory_probe(route: str, root: str, stem: str, prediction_dir: str) -> Tuple[float, float]:
    """In a fresh process: peak resident memory (MiB) added while ``route`` evaluates the dataset
    ``stem``, predictions decoded from ``prediction_dir`` one at a time; in its first evaluation
    (which, for the plugin, loads numba and its compiled kernels) and in a second one."""
    scratch = tempfile.mkdtemp(dir=root)
    install_panopticapi_stand_in(scratch)
    dataset = register(root, stem)
    evaluator = (
        COCOPanopticEvaluator(dataset)
        if route == "detectron2"
        else (PanopticQualityEvaluator(dataset))
    )
    with open(os.path.join(prediction_dir + ".json")) as f:
        entries = {a["image_id"]: a for a in json.load(f)["annotations"]}
    records = DatasetCatalog.get(dataset)
    added = []
    for _ in range(2):
        evaluator.reset()
        before = reset_peak_rss()
        for record in records:
            entry = entries[record["image_id"]]
            rgb = np.asarray(Image.open(os.path.join(prediction_dir, entry["file_name"])))
            id_map = torch.from_numpy(rgb2id(rgb).astype(np.int32))  # int32, as the model gives
            info = [_contiguous(s) for s in entry["segments_info"]]
            image = {"image_id": record["image_id"], "file_name": record["file_name"]}
            evaluator.process([image], [{"panoptic_seg": (id_map, info)}])
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
        added.append((status_kib("VmHWM") - before) / 1024)
    return added[0], added[1]


def _contiguous(segment: Dict) -> Dict:
    category = segment["category_id"] - 1
    if category < NUM_THINGS:
        return {"id": segment["id"], "isthing": True, "category_id": category}
    return {"id": segment["id"], "isthing": False, "category_id": category - NUM_THINGS + 1}


# ---------------------------------------------------------------- main


def check_equal(results: Dict[str, Dict], tolerance: float = 1e-9) -> None:
    reference = results["reference pq_compute"]
    for name, result in results.items():
        for group, metric in METRICS:
            difference = abs(result[group][metric] - reference[group][metric])
            if difference > tolerance:
                raise AssertionError(
                    f"{name} {group} {metric} differs from the reference by {difference}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    n, (height, width) = args.num_images, args.image_size
    with tempfile.TemporaryDirectory(prefix="bench_pq_eval_") as root:
        print(f"Generating {2 * n} images of {height}x{width} in {root} ...", flush=True)
        predictions = make_dataset(root, 2 * n, height, width)
        install_panopticapi_stand_in(root)
        dataset = register(root, "gt_n")
        files = export_predictions(register(root, "gt_2n"), predictions, os.path.join(root, "pred"))
        predictions = predictions[:n]

        def reference_pq_compute(gt_json, pred_json, gt_folder, pred_folder):
            results = os.path.join(root, "reference_results.json")
            return evaluatePanoptic(gt_json, gt_folder, pred_json, pred_folder, results)

        routes = {
            "Detectron2 route": lambda: run_detectron2(dataset, predictions),
            "plugin": lambda: run_plugin(dataset, predictions),
            "plugin, 1 thread": lambda: run_plugin(dataset, predictions, num_threads=1),
            "hotcoco pq_compute": lambda: run_file_based(hotcoco_pq_compute, root, files),
            "reference pq_compute": lambda: run_file_based(reference_pq_compute, root, files),
        }
        gt_pngs = [r["pan_seg_file_name"] for r in DatasetCatalog.get(dataset)]
        results = {}
        for name, route in routes.items():
            with contextlib.redirect_stdout(io.StringIO()):
                results[name] = route()
        check_equal(results)
        print(
            f"PQ {100 * results['plugin']['All']['pq']:.3f}: identical for all routes", flush=True
        )
        times = {}
        for name, route in routes.items():
            with contextlib.redirect_stdout(io.StringIO()):
                times[name] = median_seconds(route, args.repeats, warmup=0)
            print(
                f"{name:22s} {times[name]:8.3f} s  {1e3 * times[name] / n:7.2f} ms/image",
                flush=True,
            )
        decoding = {
            decoder: median_seconds(lambda: decode_pngs(decode, gt_pngs), args.repeats) / n
            for decoder, decode in (("opencv", _opencv_decode), ("plugin", _plugin_decode))
        }
        print(
            f"GT PNG decoding alone, 1 thread: OpenCV {1e3 * decoding['opencv']:.2f} ms/image, "
            f"the plugin's reader {1e3 * decoding['plugin']:.2f}",
            flush=True,
        )
        memory = {
            (route, stem): in_fresh_process(_memory_probe, route, root, stem, files["png_dir"])
            for route in ("plugin", "detectron2")
            for stem in ("gt_n", "gt_2n")
        }
    plugin = times["plugin"]
    speed_up = times["Detectron2 route"] / plugin
    print(
        f"speed-up vs Detectron2 route: {speed_up:.1f}x; "
        f"vs hotcoco: {times['hotcoco pq_compute'] / plugin:.1f}x"
    )
    for route in ("plugin", "detectron2"):
        for k, evaluation in enumerate(("first", "second")):
            print(
                f"peak memory added, {route}, {evaluation} evaluation: "
                f"{memory[route, 'gt_n'][k]:.1f} MiB ({n} images), "
                f"{memory[route, 'gt_2n'][k]:.1f} MiB ({2 * n} images)"
            )
    rows = [
        (
            "Detectron2 route: COCOPanopticEvaluator (PNG encode + write, then reference "
            "pq_compute)",
            "Detectron2 route",
        ),
        ("plugin: PanopticQualityEvaluator (process + evaluate), 2 threads", "plugin"),
        ("plugin, 1 thread", "plugin, 1 thread"),
        ("hotcoco `pq_compute` on the prediction files", "hotcoco pq_compute"),
        ("reference `pq_compute` alone on the prediction files", "reference pq_compute"),
    ]
    table = "\n".join(
        f"| {label} | {times[key]:.2f} | {1e3 * times[key] / n:.1f} | {times[key] / plugin:.1f}x |"
        for label, key in rows
    )
    update_benchmarks_md(
        "pq-eval-cpu",
        f"## PQ evaluation, {n} images of {height}x{width}, cpu\n\n"
        f"`{command_line()}` on {machine_description('cpu')}; median of {args.repeats}; "
        "PQ/SQ/RQ (All, Things, Stuff) checked equal across routes to 1e-9. "
        "Target: at least 10x faster than Detectron2's route. The reference `pq_compute` is "
        "cityscapesscripts' `evaluatePanoptic`, the same algorithm as panopticapi's (which is "
        "not on PyPI), with one process per core like it.\n\n"
        "| route | total (s) | per image (ms) | time / plugin's |\n|---|---|---|---|\n"
        + table
        + f"\n\nSpeed-up over Detectron2's route: **{speed_up:.1f}x** (target "
        f"{'met' if speed_up >= 10 else 'missed'}). Reading and decoding the GT PNGs alone, on "
        f"one thread: OpenCV (libpng: zlib inflate, then row unfiltering) "
        f"{1e3 * decoding['opencv']:.2f} ms per image; the plugin's reader (zlib-ng inflate, "
        f"then row unfiltering compiled by numba) {1e3 * decoding['plugin']:.2f} ms, "
        f"{decoding['opencv'] / decoding['plugin']:.1f}x faster. With predictions on the CPU the "
        "evaluator does not even decode the whole image: it counts each GT row into the joint "
        "histogram as soon as it is unfiltered.\n\n"
        "Peak resident memory added during evaluation (fresh process with glibc's mmap "
        f"threshold at {PROBE_MMAP_THRESHOLD // 1024} KiB, so that freed buffers leave the "
        "resident set; predictions read one at a time), for "
        f"{n} and {2 * n} images: plugin {memory['plugin', 'gt_n'][0]:.1f} and "
        f"{memory['plugin', 'gt_2n'][0]:.1f} MiB in the process's first evaluation, which loads "
        "numba and the evaluator's compiled kernels, "
        f"{memory['plugin', 'gt_n'][1]:.1f} and {memory['plugin', 'gt_2n'][1]:.1f} MiB in a "
        "second one (the working memory of its threads; neither depends on the number of "
        f"images); Detectron2 route {memory['detectron2', 'gt_n'][0]:.1f} and "
        f"{memory['detectron2', 'gt_2n'][0]:.1f} MiB, then "
        f"{memory['detectron2', 'gt_n'][1]:.1f} and {memory['detectron2', 'gt_2n'][1]:.1f} MiB "
        "(it keeps every encoded prediction until evaluate).",
    )


if __name__ == "__main__":
    main()
