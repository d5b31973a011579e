"""The training data pipeline on COCO-like data: the plugin's route against Detectron2's.

    python benchmarks/bench_loader.py [--images 60] [--seed 0] [--records 118287]

Data: ``coco_like.py`` generates the images (480x640 JPEG, median 25 thing instances, some
crowd), their COCO-panoptic PNGs + JSON for the plugin, and for Detectron2's route the
"separated" files its Panoptic FPN trains from (stuff-only semantic PNG + polygon instances, as
``prepare_panoptic_fpn.py`` and COCO's instances JSON give them).

Per image, the two routes in alternation (each image's turn starts with the other route than the
previous one's), with the COCO R50 config's augmentations (multi-scale resize of the shorter side
to 640-800, horizontal flip), the same random draw for both:

* mapper CPU time, one thread, as in a data-loader worker: ``PanopticDatasetMapper`` against
  Detectron2's default ``DatasetMapper`` (``INPUT.MASK_FORMAT polygon``);
* bytes handed from the worker to the main process: the pickled size of the mapper's output;
* the mask targets in the training step, with the machine's threads, as in the main process:
  ``gt_masks[sampled]`` for 512 sampled proposals (``label_and_sample_proposals``) and
  ``crop_and_resize`` (28x28) of 128 foreground proposals (``mask_rcnn_loss``): GT boxes of
  random instances, every other one moved by N(0, 0.1) of its size. Each route's own instances
  (polygons and their boxes for Detectron2), the same random choices. The plugin's targets are
  checked equal to those of ``BitMasks`` of the same masks, which are timed too ("full-size
  masks": what the plugin's mapper gave before).

The images per second of one worker, and the worker cores one GPU needs at the model zoo's 0.3 s
per iteration with 2 images per GPU (6.7 images/s), follow from the mapper time. The dataset check
is measured on the same files (see ``measure_check``).
"""

import argparse
import os
import pickle
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.structures import BitMasks, Boxes

import coco_like
from common import command_line, machine_description, update_benchmarks_md
from panoptic_fpn_ext import PanopticDatasetMapper, add_panoptic_fpn_ext_config
from panoptic_fpn_ext.data import check_records

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml",
)
ROUTES = ("plugin", "detectron2")
NUM_SAMPLED, NUM_FOREGROUND, MASK_SIZE = 512, 128, 28
ZOO_SECONDS_PER_ITERATION, IMAGES_PER_GPU = 0.3, 2
COCO_TRAIN_IMAGES = 118287


def mappers(min_sizes: Tuple[int, ...] = ()) -> Dict[str, Callable[[dict], dict]]:
    """The plugin's mapper and Detectron2's default one, from the COCO R50 config (with
    ``INPUT.MIN_SIZE_TRAIN`` ``min_sizes`` when given)."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()  # the records are given, not registered
    cfg.INPUT.MIN_SIZE_TRAIN = min_sizes or cfg.INPUT.MIN_SIZE_TRAIN
    detectron2_cfg = cfg.clone()
    detectron2_cfg.INPUT.MASK_FORMAT = "polygon"
    return {
        "plugin": PanopticDatasetMapper(cfg, is_train=True),
        "detectron2": DatasetMapper(detectron2_cfg, is_train=True),
    }


def timed_map(mapper: Callable[[dict], dict], record: dict, draw: int) -> Tuple[dict, float]:
    """The mapper's output for ``record`` with augmentation draw ``draw``, and its CPU seconds."""
    np.random.seed(draw)  # Detectron2's augmentations draw from numpy's global generator
    start = time.process_time()
    output = mapper(record)
    return output, time.process_time() - start


def proposals(boxes: Boxes, image_size, rng: np.random.Generator) -> Tuple[torch.Tensor, ...]:
    """(sampled, foreground, foreground boxes): 512 instance indices, 128 of them, and their
    proposal boxes (the GT box, every other one moved by N(0, 0.1) of its size, clipped)."""
    sampled = torch.from_numpy(rng.integers(len(boxes), size=NUM_SAMPLED))
    foreground = sampled[:NUM_FOREGROUND]
    box = boxes.tensor[foreground].clone()
    size = (box[:, 2:] - box[:, :2]).repeat(1, 2)
    jitter = torch.from_numpy(rng.normal(0, 0.1, box.shape).astype(np.float32)) * size
    jitter[::2] = 0
    moved = Boxes(box + jitter)
    moved.clip(image_size)
    return sampled, foreground, moved.tensor


def seconds(fn: Callable[[], object]) -> Tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def training_step(masks, sampled, foreground, boxes) -> Dict[str, object]:
    """Seconds of ``masks[sampled]`` and of the 28x28 targets of the foreground proposals."""
    _, sampling = seconds(lambda: masks[sampled])
    targets, cropping = seconds(lambda: masks[foreground].crop_and_resize(boxes, MASK_SIZE))
    return {"sampling": sampling, "targets": cropping, "mask_targets": targets}


def measure_image(routes, records, index: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Every figure of one image, the routes in the order given."""
    result = {}
    for route in routes:
        output, mapper_seconds = timed_map(routes[route], records[route][index], seed + index)
        instances = output["instances"]
        rng = np.random.default_rng(seed + index)
        sampled, foreground, boxes = proposals(instances.gt_boxes, instances.image_size, rng)
        with torch.no_grad():
            step = training_step(instances.gt_masks, sampled, foreground, boxes)
        result[route] = {
            "mapper": mapper_seconds,
            "bytes": len(pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)),
            "mask_bytes": len(pickle.dumps(instances.gt_masks, protocol=pickle.HIGHEST_PROTOCOL)),
            "sem_seg_bytes": output["sem_seg"].numel() * output["sem_seg"].element_size(),
            "instances": len(instances),
            **step,
        }
        if route == "plugin":  # the same targets from full-size masks: the check, and "before"
            full = BitMasks(instances.gt_masks.tensor)
            before = training_step(full, sampled, foreground, boxes)
            assert torch.equal(before["mask_targets"], step["mask_targets"]), index
            result["full-size masks"] = before
    return result


def measure_pipeline(records: Dict[str, List[dict]], seed: int) -> Dict[str, Dict[str, float]]:
    """Medians over the images of every figure of :func:`measure_image`."""
    routes = mappers()
    threads = torch.get_num_threads()
    for route in ROUTES:  # warm-up: compile and cache what the first call does
        timed_map(routes[route], records[route][0], seed)
    per_image = []
    for index in range(len(records["plugin"])):
        order = ROUTES if index % 2 == 0 else ROUTES[::-1]
        torch.set_num_threads(1)  # a loader worker's setting; the training step's is restored
        per_image.append(measure_image({r: routes[r] for r in order}, records, index, seed))
        torch.set_num_threads(threads)
    medians = {}
    for route in (*ROUTES, "full-size masks"):
        keys = [k for k, v in per_image[0][route].items() if not isinstance(v, torch.Tensor)]
        medians[route] = {
            k: statistics.median(image[route][k] for image in per_image) for k in keys
        }
        medians[route]["total"] = statistics.median(
            sum(image[route].get(k, 0) for k in ("mapper", "sampling", "targets"))
            for image in per_image
        )
    return medians


# ---------------------------------------------------------------- the dataset check


def time_check(records: List[dict], mode: str, threads: int, cache: str = None) -> float:
    """Seconds of one ``check_records`` call."""
    start = time.perf_counter()
    check_records(records, "bench_loader", mode, cache, num_threads=threads)
    return time.perf_counter() - start


def linked_records(records: List[dict], count: int, directory: str) -> List[dict]:
    """``count`` records whose image and PNG are hard links (distinct paths, as a dataset's
    files are) to those of ``records``, taken in turn; their segments_info lists are shared."""
    for sub in ("images", "panoptic"):
        os.makedirs(os.path.join(directory, sub))
    linked = []
    for index in range(count):
        record = records[index % len(records)]
        paths = {}
        for key, sub in (("file_name", "images"), ("pan_seg_file_name", "panoptic")):
            extension = os.path.splitext(record[key])[1]
            paths[key] = os.path.join(directory, sub, f"{index:06d}{extension}")
            os.link(record[key], paths[key])
        linked.append({**record, **paths, "image_id": index})
    return linked


def measure_check(records: List[dict], scale: int, directory: str) -> Dict[str, float]:
    """Seconds per image of the full and headers-only checks (no cache) on one thread and on
    every usable core, best of 3; then, on ``scale`` records of hard-linked files, the full check
    with an empty cache and the cached re-check (one run each)."""
    cores = len(os.sched_getaffinity(0))
    result = {"cores": cores}
    for mode in ("full", "headers"):
        time_check(records, mode, cores)  # compile, warm the page cache
        for threads in (1, cores):
            best = min(time_check(records, mode, threads) for _ in range(3))
            result[f"{mode}_{threads}"] = best / len(records)
    if scale:
        linked = linked_records(records, scale, os.path.join(directory, "linked"))
        cache = os.path.join(directory, "cache")
        result["scale"] = scale
        result["scale_full"] = time_check(linked, "full", cores, cache)
        result["scale_cached"] = time_check(linked, "full", cores, cache)
    return result


# ---------------------------------------------------------------- report


def print_results(pipeline: Dict[str, Dict[str, float]], check: Dict[str, float]) -> None:
    for route, row in pipeline.items():
        print(route, ", ".join(f"{k} {v:.4g}" for k, v in row.items()), "(seconds, bytes)")
    print("check", ", ".join(f"{k} {v:.4g}" for k, v in check.items()), "(seconds)")


def _pipeline_table(pipeline: Dict[str, Dict[str, float]]) -> str:
    plugin, reference = pipeline["plugin"], pipeline["detectron2"]
    rows = [
        ("mapper CPU time, 1 thread (ms)", "mapper", 1000, ".1f"),
        ("bytes handed to the main process (MB)", "bytes", 1e-6, ".2f"),
        ("of which instance masks (MB)", "mask_bytes", 1e-6, ".3f"),
        ("of which sem_seg (MB)", "sem_seg_bytes", 1e-6, ".2f"),
        ("`gt_masks[sampled]`, 512 proposals (ms)", "sampling", 1000, ".2f"),
        ("`crop_and_resize`, 128 proposals (ms)", "targets", 1000, ".2f"),
        ("mapper + mask targets (ms)", "total", 1000, ".1f"),
    ]
    lines = [
        "| per image (median) | plugin | Detectron2 | plugin / Detectron2 | full-size masks |",
        "|---|---|---|---|---|",
    ]
    for label, key, scale, fmt in rows:
        before = pipeline["full-size masks"].get(key)
        before = "" if before is None or key == "total" else f"{before * scale:{fmt}}"
        lines.append(
            f"| {label} | {plugin[key] * scale:{fmt}} | {reference[key] * scale:{fmt}} | "
            f"{plugin[key] / reference[key]:.3f}x | {before} |"
        )
    return "\n".join(lines)


def _throughput(pipeline: Dict[str, Dict[str, float]]) -> str:
    needed = IMAGES_PER_GPU / ZOO_SECONDS_PER_ITERATION
    parts = []
    for route, name in (("plugin", "plugin"), ("detectron2", "Detectron2")):
        seconds = pipeline[route]["mapper"]
        parts.append(
            f"{name} {1 / seconds:.0f} images/s per worker, {needed * seconds:.2f} worker "
            "cores per GPU"
        )
    return (
        f"One GPU at the model zoo's {ZOO_SECONDS_PER_ITERATION} s/iteration with "
        f"{IMAGES_PER_GPU} images needs {needed:.1f} images/s: " + "; ".join(parts) + "."
    )


def _scaled(seconds: float, factor: float) -> str:
    """ " (x factor: seconds * factor s)", or nothing for a factor of 1."""
    return "" if factor == 1 else f" (x {factor:.1f}: {seconds * factor:.2f} s)"


def _check_text(check: Dict[str, float]) -> str:
    cores = check["cores"]
    full_1, full_all = check["full_1"] * 1000, check[f"full_{cores}"] * 1000
    per_core = full_all * cores
    lines = [
        "Dataset check (`PANOPTIC_FPN_EXT.DATA_CHECK`) of the same files, no cache: full "
        f"{full_1:.2f} ms per image on 1 thread, {full_all:.2f} ms per image on {cores} threads "
        f"({per_core:.2f} ms per image per core; target at most 1 ms, "
        f"{'met' if per_core <= 1 else 'missed'}); headers only {check['headers_1'] * 1000:.3f} "
        f"ms on 1 thread, {check[f'headers_{cores}'] * 1000:.3f} ms on {cores}."
    ]
    if "scale" in check:
        factor = COCO_TRAIN_IMAGES / check["scale"]
        full, cached = check["scale_full"] * factor, check["scale_cached"] * factor
        lines.append(
            f"On {check['scale']:,} records (hard links to the generated files: distinct paths, "
            "files in the page cache; a cold disk adds its reading time): full check "
            f"{check['scale_full']:.1f} s on {cores} cores{_scaled(check['scale_full'], factor)}, "
            f"target for COCO train's {COCO_TRAIN_IMAGES:,} images at most 60 s: "
            f"{'met' if full <= 60 else 'missed'}; cached re-check {check['scale_cached']:.2f} s"
            f"{_scaled(check['scale_cached'], factor)}, target at most 5 s: "
            f"{'met' if cached <= 5 else 'missed'}."
        )
    return " ".join(lines)


def report(args: argparse.Namespace, pipeline, check) -> None:
    """Write the ``loader-cpu`` block of BENCHMARKS.md."""
    ratio = pipeline["plugin"]["total"] / pipeline["detectron2"]["total"]
    update_benchmarks_md(
        "loader-cpu",
        "## Training data pipeline on COCO-like data, cpu\n\n"
        f"`{command_line()}` on {machine_description()}. {args.images} generated COCO-like "
        "images (480x640 JPEG, median 25 thing instances, some crowd; `benchmarks/coco_like.py`), "
        "the COCO R50 config's augmentations (shorter side 640-800, flip), the same draw for "
        "both routes, in alternation. Plugin: `PanopticDatasetMapper` from the COCO-panoptic PNG "
        '+ JSON. Detectron2: its default `DatasetMapper` on the "separated" files (stuff-only '
        "PNG + polygons). Mask targets: `gt_masks[sampled]` as `label_and_sample_proposals` does "
        "it, and `crop_and_resize` of 128 foreground proposals (GT boxes, every other one moved "
        f"by 10% of its size) as `mask_rcnn_loss` does it, on {torch.get_num_threads()} threads; "
        "the plugin's targets checked equal to those of `BitMasks` of the same masks "
        '("full-size masks": the plugin\'s previous structure). GPU: not measured (no GPU on '
        "this machine).\n\n"
        + _pipeline_table(pipeline)
        + f"\n\nPlugin / Detectron2, mapper + mask targets: **{ratio:.3f}x** (target at most "
        f"1.0x, {'met' if ratio <= 1 else 'missed'}). "
        + _throughput(pipeline)
        + "\n\n"
        + _check_text(check),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--records",
        type=int,
        default=COCO_TRAIN_IMAGES,
        help="records of the dataset check at scale (0: skip)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        plugin_records, detectron2_records = coco_like.generate(directory, args.images, args.seed)
        records = {"plugin": plugin_records, "detectron2": detectron2_records}
        pipeline = measure_pipeline(records, args.seed)
        check = measure_check(plugin_records, args.records, directory)
    print_results(pipeline, check)
    report(args, pipeline, check)


if __name__ == "__main__":
    main()
