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

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml",
)
ROUTES = ("plugin", "detectron2")
NUM_SAMPLED, NUM_FOREGROUND, MASK_SIZE = 512, 128, 28
ZOO_SECONDS_PER_ITERATION, IMAGES_PER_GPU = 0.3, 2


def mappers() -> Dict[str, Callable[[dict], dict]]:
    """The plugin's mapper and Detectron2's default one, from the COCO R50 config."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()  # the records are given, not registered
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
        medians[route] = {k: statistics.median(image[route][k] for image in per_image) for k in keys}
        medians[route]["total"] = statistics.median(
            sum(image[route].get(k, 0) for k in ("mapper", "sampling", "targets"))
            for image in per_image
        )
    return medians
