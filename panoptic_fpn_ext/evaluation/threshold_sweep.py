"""PQ of the panoptic heuristic at many threshold settings, from cached network outputs.

Every image of a :class:`~.combiner_cache.CombinerCache` is unpacked once and its ground truth
decoded once; then, for each setting, the plugin's combiner
(:class:`~panoptic_fpn_ext.modeling.PanopticHeuristicCombiner`, the model's own) combines it and
the PQ evaluator's per-image statistics (:func:`.pq.image_pq_statistics`) are added to that
setting's totals. The results are the evaluator's (:func:`.pq.pq_results`): at a setting, the PQ
of an evaluation run of the model with those thresholds, to float rounding of the sums.

Shards are shared among worker processes (spawned, one torch thread each), whose per-shard totals
are saved next to the cache, so an interrupted sweep resumes where it stopped.
"""

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from ..file_io import atomic_write
from ..modeling.combiner import PanopticHeuristicCombiner
from .combiner_cache import CachedImage, read_shard
from .id_index import ground_truth_ids
from .panoptic_evaluator import read_ground_truth
from .pq import PQStatistics, Segments, image_pq_statistics, segments_from_info

__all__ = [
    "DatasetClasses",
    "GroundTruthImage",
    "Setting",
    "ShardTask",
    "map_shards",
    "stack_statistics",
    "sweep",
    "unstack_statistics",
]

# Config keys of the three thresholds, in Setting's order.
SETTING_KEYS = (
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
    "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
)


class Setting(NamedTuple):
    """The heuristic's thresholds: instance confidence, overlap share, stuff area (pixels)."""

    confidence: float
    overlap: float
    stuff_area: float

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "Setting":
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return cls(
            float(combine.INSTANCES_CONFIDENCE_THRESH),
            float(combine.OVERLAP_THRESH),
            float(combine.STUFF_AREA_LIMIT),
        )

    def combiner(self) -> PanopticHeuristicCombiner:
        """The plugin's heuristic combiner with these thresholds."""
        return PanopticHeuristicCombiner(
            overlap_threshold=self.overlap,
            stuff_area_limit=self.stuff_area,
            instances_score_threshold=self.confidence,
        )

    def config(self) -> Dict[str, float]:
        """{config key: value} of the three thresholds."""
        return dict(zip(SETTING_KEYS, self))


@dataclass
class DatasetClasses:
    """The PQ evaluator's categories of a dataset: things, then stuff (metadata's
    ``thing_classes`` + ``stuff_classes[1:]``)."""

    names: List[str]
    num_things: int
    num_stuff: int

    @classmethod
    def of(cls, dataset_name: str) -> "DatasetClasses":
        metadata = MetadataCatalog.get(dataset_name)
        things, stuff = list(metadata.thing_classes), list(metadata.stuff_classes[1:])
        return cls(things + stuff, len(things), len(stuff))

    @property
    def isthing(self) -> np.ndarray:
        """bool (C,)."""
        return np.arange(len(self.names)) < self.num_things


class ShardTask(NamedTuple):
    """One shard file and the dataset records of its images, in order."""

    path: str
    records: List[Dict[str, Any]]


class GroundTruthImage(NamedTuple):
    """One image's GT, decoded once for many comparisons: int32 (H, W) ids on the device of the
    predictions, its segments, and the image's name for error messages."""

    id_map: torch.Tensor
    segments: Segments
    describe: str


def load_ground_truth(
    record: Mapping[str, Any], classes: DatasetClasses, device: str
) -> GroundTruthImage:
    """The record's GT (the PQ evaluator's reader and checks), decoded to ids on ``device``."""
    describe = f"image_id {record['image_id']!r} ({record['file_name']})"
    pixels, segments = read_ground_truth(record, classes.num_things, classes.num_stuff, describe)
    return GroundTruthImage(ground_truth_ids(pixels).to(device), segments, describe)


def prediction_statistics(
    panoptic: Tuple[torch.Tensor, List[Dict]], gt: GroundTruthImage, classes: DatasetClasses
) -> PQStatistics:
    """The PQ evaluator's statistics of one combined image ``(id map, segments_info)``."""
    id_map, segments_info = panoptic
    pred = segments_from_info(
        segments_info, classes.num_things, classes.num_stuff, f"{gt.describe}: prediction"
    )
    return image_pq_statistics(
        gt.id_map, gt.segments, id_map, pred, len(classes.names), gt.describe
    )


class CombinerInputs(NamedTuple):
    """One cached image unpacked as the combiner takes it (see :meth:`CachedImage.instances`)."""

    instances: Any
    semantic: torch.Tensor
    mask_boxes: torch.Tensor

    @classmethod
    def of(cls, image: CachedImage, device: str) -> "CombinerInputs":
        instances, boxes = image.instances(device)
        return cls(instances, image.semantic_labels(device), boxes)

    def combine(self, setting: Setting) -> Tuple[torch.Tensor, List[Dict]]:
        return setting.combiner()(self.instances, self.semantic, mask_boxes=self.mask_boxes)


def stack_statistics(statistics: Sequence[PQStatistics]) -> Dict[str, np.ndarray]:
    """Statistics of several settings (or stages) as two arrays: "counts" int64 (G, 3, C) TP,
    FP, FN and "iou_sum" float64 (G, C)."""
    return {
        "counts": np.stack([np.stack([s.tp, s.fp, s.fn]) for s in statistics]),
        "iou_sum": np.stack([s.iou_sum for s in statistics]),
    }


def unstack_statistics(arrays: Mapping[str, np.ndarray]) -> List[PQStatistics]:
    """The inverse of :func:`stack_statistics`."""
    return [PQStatistics(*counts, iou) for counts, iou in zip(arrays["counts"], arrays["iou_sum"])]


def shard_statistics(
    task: ShardTask, settings: Sequence[Setting], classes: DatasetClasses, device: str
) -> Dict[str, np.ndarray]:
    """PQ statistics of one shard's images at every setting.

    Returns:
        "counts": int64 (G, 3, C) TP, FP, FN; "iou_sum": float64 (G, C).
    """
    totals = [PQStatistics.zeros(len(classes.names)) for _ in settings]
    for image, record in zip(read_shard(task.path), task.records):
        gt = load_ground_truth(record, classes, device)
        inputs = CombinerInputs.of(image, device)
        for total, setting in zip(totals, settings):
            total.add_(prediction_statistics(inputs.combine(setting), gt, classes))
    return stack_statistics(totals)


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def map_shards(
    function: Callable[..., Dict[str, np.ndarray]],
    tasks: Sequence[ShardTask],
    args: tuple,
    workers: int,
    done: Callable[[int, Dict[str, np.ndarray]], None],
) -> None:
    """``done(k, function(tasks[k], *args))`` for every task: in this process when ``workers``
    <= 1, else in that many worker processes with one torch thread each (``done`` is called
    here, as each task finishes). Workers are forked where the platform can (started at once,
    as Detectron2's data-loader workers are), else spawned."""
    if workers <= 1 or len(tasks) <= 1:
        for k, task in enumerate(tasks):
            done(k, function(task, *args))
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_one_torch_thread
    ) as pool:
        futures = {pool.submit(function, task, *args): k for k, task in enumerate(tasks)}
        for future in as_completed(futures):
            done(futures[future], future.result())


def sweep_key(settings: Sequence[Setting], ground_truth: str, device: str) -> str:
    """A name for one sweep's saved per-shard results: a hash of the settings, the GT's
    fingerprint and the device."""
    text = json.dumps([list(settings), ground_truth, device])
    return "sweep_" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    def write(f):
        np.savez(f, **arrays)

    atomic_write(path, write)


def sweep(
    tasks: Sequence[ShardTask],
    settings: Sequence[Setting],
    classes: DatasetClasses,
    device: str,
    workers: int,
    results_dir: Optional[str] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> List[PQStatistics]:
    """PQ statistics of the whole dataset at every setting (in ``settings`` order).

    Args:
        tasks: the cache's shards with their records.
        device: where the combiner and the statistics run ("cpu": the combiner's compiled
            sequential path; "cuda": its parallel path, in this process).
        workers: processes for the CPU route (1: this process).
        results_dir: where per-shard totals are saved and, when present, reused.
        progress: called with the number of (image, setting) pairs each finished shard adds.
    """
    parts: List[Optional[List[PQStatistics]]] = [None] * len(tasks)
    saved = [
        os.path.join(results_dir, os.path.basename(task.path)) if results_dir else None
        for task in tasks
    ]

    def done(k: int, arrays: Mapping[str, np.ndarray], save: bool = True) -> None:
        parts[k] = unstack_statistics(arrays)
        if save and saved[k] is not None:
            _save_arrays(saved[k], arrays)
        if progress is not None:
            progress(len(tasks[k].records) * len(settings))

    todo = []
    for k, path in enumerate(saved):
        if path is not None and os.path.exists(path):
            with np.load(path) as data:
                done(k, {key: data[key] for key in data.files}, save=False)
        else:
            todo.append(k)
    map_shards(
        shard_statistics,
        [tasks[k] for k in todo],
        (list(settings), classes, device),
        workers if device == "cpu" else 1,
        lambda j, arrays: done(todo[j], arrays),
    )
    totals = [PQStatistics.zeros(len(classes.names)) for _ in settings]
    for part in parts:
        for total, statistics in zip(totals, part):
            total.add_(statistics)
    return totals
