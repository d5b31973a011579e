"""Where PQ is lost to the panoptic heuristic's decisions, at one threshold setting.

The heuristic decides four things that can turn a segment the networks got right into a false
negative (and its pixels into false positives elsewhere): it ignores instances scoring below the
confidence threshold, skips instances whose mask is taken beyond the overlap share, removes stuff
regions smaller than the area limit, and leaves pixels that nothing claims unlabelled (0).

For each image, stage 0 is the combiner's output at the setting. Each following stage makes one
decision the right way for the segments that ground truth (GT) says are right, keeping the
earlier stages' changes (cumulative, in this order):

1. ``confidence``: *matched* instances scoring below the threshold are considered too. An
   instance is matched when its whole mask (before the combiner) would be a true positive: IoU
   > 0.5 with a non-crowd GT segment of its class, by the PQ rule (the mask's pixels on GT void
   are left out of the union), and no instance ranked before it (the combiner's order, by
   score) is matched to that segment: duplicates are not matched.
2. ``overlap``: matched instances that the overlap rule skipped are kept whenever they still
   have a free pixel (their overlap threshold raised to just below 1, through the combiner's
   per-instance thresholds).

   In both steps a changed decision stands only where the instance ends as a true positive:
   the others get their decision back and the combiner runs again, until every changed one is
   a true positive (a perfect decision changes nothing it would not gain from).
3. ``stuff_area``: a stuff label that the area limit removed is kept when its free pixels are
   matched (IoU > 0.5 with a non-crowd GT segment of that stuff class); the combiner's per-label
   limits.
4. ``unlabelled``: each unlabelled pixel on a non-crowd GT segment goes to the predicted segment
   of the GT segment's class that has the most pixels on it, unless that one is matched to
   another GT segment (none: the pixel stays unlabelled).

Stages 1-3 re-run the plugin's combiner with the rule relaxed; stage 4 edits stage 3's map. Every
stage is evaluated with the PQ evaluator's statistics, so the PQ of stage 0 is the measured one,
the contribution of a step is the PQ after it minus the PQ before it (overall, things, stuff, per
class), and the contributions add up to PQ(stage 4) - PQ(stage 0), the gap that these four
decisions explain; what is left to 100 is the networks' (a wrong class, a bad mask, a missed or
extra segment). A step can also be negative: a right segment kept can take pixels that another
right segment needed. Counts: the changed decisions per step and class, and the changes of TP,
FP and FN they bring.
"""

import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Instances

from ..modeling.post_processing import combine_panoptic
from .combiner_cache import read_shard
from .counting import image_joint_histogram
from .id_index import segment_index_map
from .pq import PQStatistics, Segments, pq_results, segments_from_info
from .threshold_sweep import (
    CombinerInputs,
    DatasetClasses,
    GroundTruthImage,
    Setting,
    ShardTask,
    load_ground_truth,
    map_shards,
    prediction_statistics,
    stack_statistics,
    unstack_statistics,
)

__all__ = ["STEPS", "ErrorAnalysis", "analyze_errors", "image_errors", "matched_instances"]

STEPS = ("confidence", "overlap", "stuff_area", "unlabelled")
# An overlap threshold that keeps a mask with at least one free pixel: taken / area > it only when
# every pixel is taken (for masks below 2^52 pixels).
KEEP_IF_ANY_FREE = float(np.nextafter(1.0, 0.0))
# A confidence threshold below every score but -inf (the score of instances left out).
LOWEST = -sys.float_info.max
# A combiner's output: int32 (H, W) panoptic map and its segments_info.
Combined = Tuple[torch.Tensor, List[Dict]]


def _iou_above_half(inter, gt_area, pred_area, pred_void) -> np.ndarray:
    """The PQ match test, broadcast: IoU > 0.5 with the prediction's pixels on GT void left out
    of the union."""
    return 2 * inter > gt_area + pred_area - inter - pred_void


@dataclass
class _GroundTruthIndex:
    """One image's GT segments as indices: ``index`` int32 (H, W) (0 void, k + 1 for segment
    k), ``area`` int64 (K + 2,) pixels per index, ``categories`` int64 (K,), ``crowd`` bool
    (K,)."""

    index: torch.Tensor
    area: np.ndarray
    categories: np.ndarray
    crowd: np.ndarray

    @classmethod
    def of(cls, gt: GroundTruthImage) -> "_GroundTruthIndex":
        index = segment_index_map(gt.id_map, gt.segments.ids)
        area = torch.bincount(index.flatten().long(), minlength=len(gt.segments.ids) + 2)
        segments = gt.segments
        return cls(index, area.cpu().numpy(), segments.categories.numpy(), segments.iscrowd.numpy())

    def match(self, counts: np.ndarray, category: int) -> int:
        """The non-crowd GT segment of ``category`` that a region with ``counts`` (int64 (K + 2,)
        pixels per GT index) is matched to (IoU > 0.5; at most one, GT segments being
        disjoint), or -1."""
        inter = counts[1:-1]
        ok = _iou_above_half(inter, self.area[1:-1], counts.sum(), counts[0])
        ok &= (self.categories == category) & ~self.crowd
        return int(np.argmax(ok)) if ok.any() else -1


def matched_instances(inputs: CombinerInputs, gt: _GroundTruthIndex) -> np.ndarray:
    """bool (N,): the instances whose whole mask is matched to a GT segment of their class, and
    ranked first (the combiner's order) among the instances matched to it: a lower-ranked
    duplicate of a detected segment is not matched."""
    masks = inputs.instances.pred_masks
    classes = inputs.instances.pred_classes.tolist()
    index = gt.index.long()
    boxes = inputs.mask_boxes.tolist()
    result = np.zeros(len(classes), dtype=bool)
    claimed = set()
    for k in torch.argsort(-inputs.instances.scores).tolist():
        x0, y0, x1, y1 = boxes[k]
        inside = index[y0:y1, x0:x1][masks[k, y0:y1, x0:x1]]
        counts = torch.bincount(inside, minlength=len(gt.area)).cpu().numpy()
        segment = gt.match(counts, classes[k]) if counts.sum() else -1
        result[k] = segment >= 0 and segment not in claimed
        claimed.add(segment)
    return result


def _with_scores(instances: Instances, scores: torch.Tensor) -> Instances:
    result = Instances(instances.image_size, **instances.get_fields())
    result.scores = scores
    return result


def _kept_instances(segments_info: Sequence[Mapping], num: int) -> np.ndarray:
    """bool (N,): the instances that are thing segments of ``segments_info``."""
    kept = np.zeros(num, dtype=bool)
    kept[[s["instance_id"] for s in segments_info if s["isthing"]]] = True
    return kept


def _restorable_labels(
    panoptic: torch.Tensor, semantic: torch.Tensor, gt: _GroundTruthIndex, num_things: int
) -> List[int]:
    """Stuff labels with unlabelled pixels in ``panoptic`` (removed by the area limit) whose
    free pixels are matched to a GT segment of their class."""
    free = panoptic == 0
    width = len(gt.area)
    key = semantic[free].long() * width + gt.index[free].long()
    num_labels = int(semantic.max()) + 1 if semantic.numel() else 1
    counts = torch.bincount(key, minlength=num_labels * width).view(num_labels, width)
    counts = counts.cpu().numpy()
    return [
        label
        for label in range(1, num_labels)
        if counts[label].sum() > 0 and gt.match(counts[label], num_things + label - 1) >= 0
    ]


class _Pairs(NamedTuple):
    """A combined image against its GT: the joint histogram ``hist`` (Kg + 2, Kp + 2), the
    predicted segments ``pred``, and bool (Kg, Kp) ``matched`` (IoU > 0.5, non-crowd GT, any
    categories) and ``true`` (those of equal categories: the true positives)."""

    hist: np.ndarray
    pred: Segments
    matched: np.ndarray
    true: np.ndarray

    @classmethod
    def of(
        cls,
        combined: Combined,
        gt_image: GroundTruthImage,
        gt: _GroundTruthIndex,
        classes: DatasetClasses,
    ) -> "_Pairs":
        panoptic, segments_info = combined
        describe = f"{gt_image.describe}: prediction"
        pred = segments_from_info(segments_info, classes.num_things, classes.num_stuff, describe)
        hist = image_joint_histogram(gt_image.id_map, gt_image.segments.ids, panoptic, pred.ids)
        inter = hist[1:-1, 1:-1]
        matched = _iou_above_half(inter, gt.area[1:-1, None], hist[:, 1:-1].sum(0), hist[0, 1:-1])
        matched &= ~gt.crowd[:, None]
        true = matched & (gt.categories[:, None] == pred.categories.numpy()[None, :])
        return cls(hist, pred, matched, true)

    def true_instances(self, segments_info: Sequence[Mapping], num: int) -> np.ndarray:
        """bool (N,): the instances whose thing segment is a true positive."""
        true_ids = set(self.pred.ids.numpy()[self.true.any(axis=0)].tolist())
        result = np.zeros(num, dtype=bool)
        for s in segments_info:
            if s["isthing"] and s["id"] in true_ids:
                result[s["instance_id"]] = True
        return result


def _fill_unlabelled(panoptic: torch.Tensor, pairs: _Pairs, gt: _GroundTruthIndex) -> torch.Tensor:
    """Stage 4's map: unlabelled pixels of each non-crowd GT segment given to the predicted
    segment of its class with the most pixels on it, unless that one is a true positive of
    another GT segment."""
    inter = pairs.hist[1:-1, 1:-1]
    same = gt.categories[:, None] == pairs.pred.categories.numpy()[None, :]
    free_to_take = ~pairs.true.any(axis=0)[None, :] | pairs.true
    unlabelled = pairs.hist[1:-1, :1] > 0
    eligible = same & free_to_take & (inter > 0) & ~gt.crowd[:, None] & unlabelled
    receiver = np.zeros(len(gt.area), dtype=np.int32)
    has_receiver = eligible.any(axis=1)
    best = np.where(eligible, inter, -1).argmax(axis=1)
    receiver[1:-1][has_receiver] = pairs.pred.ids.numpy()[best[has_receiver]]
    table = torch.from_numpy(receiver).to(panoptic.device)
    return torch.where(panoptic == 0, table[gt.index.long()], panoptic)


def _confusion(pairs: _Pairs, gt: _GroundTruthIndex, num_classes: int) -> np.ndarray:
    """int64 (C, C): [GT category, predicted category] counts of matched segment pairs."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    g, p = np.nonzero(pairs.matched)
    np.add.at(confusion, (gt.categories[g], pairs.pred.categories.numpy()[p]), 1)
    return confusion


def _relax(
    run: Callable[[np.ndarray], Combined],
    candidates: np.ndarray,
    true_instances: Callable[[Combined], np.ndarray],
) -> Tuple[np.ndarray, Optional[Combined]]:
    """Change a decision for ``candidates`` (bool (N,)): ``run(relaxed)`` combines with the
    decision changed for the instances of ``relaxed``; those that do not end as true positives
    get their decision back, until all of them do (each round drops at least one, so at most N
    rounds). Returns the final ``relaxed`` and its combination (None if it is empty)."""
    relaxed = candidates.copy()
    while relaxed.any():
        combined = run(relaxed)
        good = relaxed & true_instances(combined)
        if np.array_equal(good, relaxed):
            return relaxed, combined
        relaxed = good
    return relaxed, None


def image_errors(
    inputs: CombinerInputs,
    gt_image: GroundTruthImage,
    setting: Setting,
    classes: DatasetClasses,
) -> Dict[str, Any]:
    """The stages of the module docstring for one image.

    Returns:
        "statistics": the 5 stages' PQ statistics (list); "decisions": int64 (4, C) decisions
        changed per step, by category (instances considered, instances kept, stuff labels kept,
        GT segments given unlabelled pixels); "unlabelled_pixels": int64 (C,) pixels given, by
        GT category; "confusion": int64 (C, C), [GT, predicted] category of the segment pairs
        with IoU > 0.5 at stage 0.
    """
    gt = _GroundTruthIndex.of(gt_image)
    num_classes = len(classes.names)
    decisions = np.zeros((len(STEPS), num_classes), dtype=np.int64)
    instances, scores = inputs.instances, inputs.instances.scores
    num, labels = len(scores), inputs.instances.pred_classes.cpu().numpy()
    matched = matched_instances(inputs, gt)
    below = (scores < setting.confidence).cpu().numpy()
    confidence, overlap = setting.confidence, setting.overlap

    def true_instances(combined: Combined) -> np.ndarray:
        return _Pairs.of(combined, gt_image, gt, classes).true_instances(combined[1], num)

    stages = [inputs.combine(setting)]
    # 1: matched instances below the confidence threshold considered
    def consider(relaxed: np.ndarray) -> Combined:
        excluded = torch.from_numpy(below & ~relaxed).to(scores.device)
        lowered = _with_scores(instances, torch.where(excluded, -torch.inf, scores))
        return _combine(lowered, inputs, overlap, setting.stuff_area, LOWEST)

    admitted, combined = _relax(consider, matched & below, true_instances)
    if combined is not None:
        excluded = torch.from_numpy(below & ~admitted).to(scores.device)
        instances = _with_scores(instances, torch.where(excluded, -torch.inf, scores))
        confidence = LOWEST
    stages.append(stages[-1] if combined is None else combined)
    np.add.at(decisions[0], labels[admitted], 1)
    # 2: matched instances skipped by the overlap rule kept while they have a free pixel
    skipped = matched & (~below | admitted) & ~_kept_instances(stages[-1][1], num)

    def keep(relaxed: np.ndarray) -> Combined:
        thresholds = torch.from_numpy(np.where(relaxed, KEEP_IF_ANY_FREE, setting.overlap))
        thresholds = thresholds.to(scores.device)
        return _combine(instances, inputs, thresholds, setting.stuff_area, confidence)

    kept, combined = _relax(keep, skipped, true_instances)
    if combined is not None:
        overlap = torch.from_numpy(np.where(kept, KEEP_IF_ANY_FREE, setting.overlap))
        overlap = overlap.to(scores.device)
    stages.append(stages[-1] if combined is None else combined)
    np.add.at(decisions[1], labels[kept], 1)
    # 3: stuff labels removed by the area limit kept when their free pixels are matched (the
    # things do not change, so these free pixels are the segments they become)
    restore = _restorable_labels(stages[-1][0], inputs.semantic, gt, classes.num_things)
    if restore:
        size = max(classes.num_stuff + 1, int(inputs.semantic.max()) + 1)
        limits = torch.full((size,), float(setting.stuff_area), dtype=torch.float64)
        limits[restore] = 1.0
        limits = limits.to(scores.device)
        stages.append(_combine(instances, inputs, overlap, limits, confidence))
        np.add.at(decisions[2], classes.num_things + np.array(restore) - 1, 1)
    else:
        stages.append(stages[-1])
    # 4: unlabelled pixels of GT segments given to the predicted segment of their class
    panoptic, segments_info = stages[-1]
    filled = _fill_unlabelled(panoptic, _Pairs.of(stages[-1], gt_image, gt, classes), gt)
    changed = (filled != panoptic).flatten()
    given = torch.bincount(gt.index.flatten().long()[changed], minlength=len(gt.area))
    given = given.cpu().numpy()[1:-1]
    pixels = np.zeros(num_classes, dtype=np.int64)
    np.add.at(pixels, gt.categories, given)
    np.add.at(decisions[3], gt.categories, given > 0)
    stages.append((filled, segments_info))
    return {
        "statistics": [prediction_statistics(stage, gt_image, classes) for stage in stages],
        "decisions": decisions,
        "unlabelled_pixels": pixels,
        "confusion": _confusion(_Pairs.of(stages[0], gt_image, gt, classes), gt, num_classes),
    }


def _combine(instances: Instances, inputs: CombinerInputs, overlap, stuff_area, confidence):
    """The plugin's combiner on ``instances`` and ``inputs``' labels, thresholds as given
    (numbers, or the per-instance / per-label tensors of the relaxed steps)."""
    return combine_panoptic(
        instances, inputs.semantic, overlap, stuff_area, confidence, mask_boxes=inputs.mask_boxes
    )


def _stacked(result: Mapping[str, object]) -> Dict[str, np.ndarray]:
    arrays = {key: result[key] for key in ("decisions", "unlabelled_pixels", "confusion")}
    return {**stack_statistics(result["statistics"]), **arrays}


def shard_errors(
    task: ShardTask, setting: Setting, classes: DatasetClasses, device: str
) -> Dict[str, np.ndarray]:
    """:func:`image_errors` of a shard's images, summed: "counts" int64 (5, 3, C) TP, FP, FN
    per stage; "iou_sum" float64 (5, C); "decisions", "unlabelled_pixels", "confusion"."""
    total = None
    for image, record in zip(read_shard(task.path), task.records):
        gt = load_ground_truth(record, classes, device)
        result = _stacked(image_errors(CombinerInputs.of(image, device), gt, setting, classes))
        total = result if total is None else {k: total[k] + v for k, v in result.items()}
    return total


@dataclass
class ErrorAnalysis:
    """The analysis of a dataset at one setting (see the module docstring).

    Attributes:
        stages: PQ statistics of stages 0 (measured) to 4.
        decisions: int64 (4, C), unlabelled_pixels: int64 (C,), confusion: int64 (C, C).
    """

    setting: Setting
    classes: DatasetClasses
    stages: List[PQStatistics]
    decisions: np.ndarray
    unlabelled_pixels: np.ndarray
    confusion: np.ndarray

    def stage_results(self) -> List[Dict[str, float]]:
        """The PQ evaluator's results (percent) of each stage."""
        return [pq_results(s, self.classes.isthing, self.classes.names) for s in self.stages]

    def contributions(self) -> Dict[str, Dict[str, float]]:
        """{step: {metric: result after the step - result before}}, every metric of
        :meth:`stage_results` (NaN for a class with no segment)."""
        results = self.stage_results()
        return {
            step: {key: after[key] - before[key] for key in before}
            for step, before, after in zip(STEPS, results[:-1], results[1:])
        }

    def count_changes(self) -> Dict[str, np.ndarray]:
        """{step: int64 (3, C) change of TP, FP, FN per class}."""
        counts = [np.stack([s.tp, s.fp, s.fn]) for s in self.stages]
        return {step: b - a for step, a, b in zip(STEPS, counts[:-1], counts[1:])}


def analyze_errors(
    tasks: Sequence[ShardTask],
    setting: Setting,
    classes: DatasetClasses,
    device: str,
    workers: int,
) -> ErrorAnalysis:
    """The analysis of every image of ``tasks`` at ``setting`` (shards shared among ``workers``
    processes on the CPU, as :func:`.threshold_sweep.sweep`)."""
    parts: List[Dict[str, np.ndarray]] = [None] * len(tasks)

    def done(k: int, arrays: Dict[str, np.ndarray]) -> None:
        parts[k] = arrays

    map_shards(
        shard_errors, tasks, (setting, classes, device), workers if device == "cpu" else 1, done
    )
    total = {key: sum(part[key] for part in parts) for key in parts[0]}
    return ErrorAnalysis(
        setting,
        classes,
        unstack_statistics(total),
        total["decisions"],
        total["unlabelled_pixels"],
        total["confusion"],
    )
