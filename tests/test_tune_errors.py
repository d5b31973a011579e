"""The PQ error analysis (panoptic_fpn_ext.evaluation.pq_errors) on hand-made images where each
of the combiner's decisions costs a known segment: what each step recovers, the decisions it
counts, the ones it gives back, and that the steps add up to the gap."""

import math

import numpy as np
import pytest
import torch
from detectron2.structures import Instances

from panoptic_fpn_ext.evaluation.pq import pq_results, segments_from_info
from panoptic_fpn_ext.evaluation.pq_errors import STEPS, image_errors
from panoptic_fpn_ext.evaluation.threshold_sweep import (
    CombinerInputs,
    DatasetClasses,
    GroundTruthImage,
    Setting,
)
from panoptic_fpn_ext.modeling.placement import locate_masks

CLASSES = DatasetClasses(["circle", "square", "triangle", "sky", "ground", "water"], 3, 3)
SIZE = 12
SKY = 1  # semantic label (stuff contiguous id) of sky; ground 2, water 3
SQUARE = (slice(2, 6), slice(2, 6))  # a 4x4 GT square (thing class 1)
TRIANGLE = (slice(7, 11), slice(1, 5))  # a 4x4 region of GT class triangle (thing class 2)
WATER = (slice(8, 11), slice(8, 11))  # a 3x3 GT water region


def ground_truth(things=(), stuff=()):
    """GT: sky everywhere, then things ``(class, region)`` and stuff ``(label, region)``."""
    id_map = torch.full((SIZE, SIZE), 100, dtype=torch.int32)
    info = [{"id": 100, "category_id": SKY, "isthing": False}]
    for k, (category, region) in enumerate(things, start=1):
        id_map[region] = k
        info.append({"id": k, "category_id": category, "isthing": True})
    for k, (label, region) in enumerate(stuff, start=200):
        id_map[region] = k
        info.append({"id": k, "category_id": label, "isthing": False})
    segments = segments_from_info(info, CLASSES.num_things, CLASSES.num_stuff, "test GT")
    return GroundTruthImage(id_map, segments, "test image")


def combiner_inputs(instances=(), labels=()):
    """Instances ``(class, score, region)``; semantic labels: sky, then ``(label, region)``."""
    masks = torch.zeros(len(instances), SIZE, SIZE, dtype=torch.bool)
    for k, (_, _, region) in enumerate(instances):
        masks[(k, *region)] = True
    result = Instances((SIZE, SIZE))
    result.pred_masks = masks
    result.scores = torch.tensor([s for _, s, _ in instances], dtype=torch.float32)
    result.pred_classes = torch.tensor([c for c, _, _ in instances], dtype=torch.int64)
    semantic = torch.full((SIZE, SIZE), SKY, dtype=torch.uint8)
    for label, region in labels:
        semantic[region] = label
    boxes = torch.from_numpy(locate_masks(masks, list(range(len(instances)))))
    return CombinerInputs(result, semantic, boxes)


def analyze(inputs, gt, setting):
    errors = image_errors(inputs, gt, Setting(*setting), CLASSES)
    results = [pq_results(s, CLASSES.isthing, CLASSES.names) for s in errors["statistics"]]
    return errors, results


def assert_steps_add_up(results):
    for key in results[0]:
        if math.isnan(results[0][key]):
            continue
        parts = [after[key] - before[key] for before, after in zip(results[:-1], results[1:])]
        assert math.fsum(parts) == pytest.approx(results[-1][key] - results[0][key], abs=1e-12)


def test_confidence_step_considers_the_matched_instance_but_not_its_duplicate():
    gt = ground_truth(things=[(1, SQUARE)])
    inputs = combiner_inputs(
        [(1, 0.3, SQUARE), (1, 0.2, SQUARE)], labels=[(0, SQUARE)]  # a duplicate, lower
    )
    errors, results = analyze(inputs, gt, (0.5, 0.5, 1))
    assert results[0]["PQ_square"] == 0.0 and results[1]["PQ_square"] == 100.0
    assert errors["decisions"][0].tolist() == [0, 1, 0, 0, 0, 0]
    before, after = (np.array([s.tp[1], s.fn[1]]) for s in errors["statistics"][:2])
    assert (after - before).tolist() == [1, -1]  # square: TP +1, FN -1
    for later in results[2:]:  # nothing left for the later steps
        assert np.array_equal(list(later.values()), list(results[1].values()), equal_nan=True)
    assert_steps_add_up(results)


def test_overlap_step_keeps_what_becomes_a_true_positive_and_gives_back_the_rest():
    gt = ground_truth(things=[(1, SQUARE), (2, TRIANGLE)])
    first_row = (slice(2, 3), slice(2, 6))  # 4 of the square's 16 pixels
    most_of_triangle = (slice(7, 10), slice(1, 5))  # 12 of its 16 pixels
    inputs = combiner_inputs(
        [
            (0, 0.9, first_row),  # a circle (wrong class) over the square's first row
            (1, 0.8, SQUARE),  # the square: 1/4 taken > 0.2, skipped
            (0, 0.95, most_of_triangle),  # a circle over most of the triangle
            (2, 0.85, TRIANGLE),  # the triangle: 3/4 taken, its free 1/4 cannot match
        ],
        labels=[(0, SQUARE), (0, TRIANGLE)],
    )
    errors, results = analyze(inputs, gt, (0.5, 0.2, 1))
    assert errors["decisions"][1].tolist() == [0, 1, 0, 0, 0, 0]
    assert results[1]["PQ_square"] == 0.0
    assert results[2]["PQ_square"] == pytest.approx(75.0)  # IoU 12 / 16
    assert results[2]["PQ_triangle"] == 0.0  # given back: kept, it would be a false positive
    assert errors["statistics"][2].fp[2] == 0
    assert_steps_add_up(results)


def test_stuff_step_keeps_a_matched_region_below_the_area_limit_only():
    gt = ground_truth(stuff=[(3, WATER)])
    patch = (slice(0, 2), slice(9, 11))  # "ground" where the GT is sky: not restored
    inputs = combiner_inputs(labels=[(3, WATER), (2, patch)])
    errors, results = analyze(inputs, gt, (0.5, 0.5, 20))
    assert errors["decisions"][2].tolist() == [0, 0, 0, 0, 0, 1]
    assert results[2]["PQ_water"] == 0.0 and results[3]["PQ_water"] == 100.0
    assert math.isnan(results[3]["PQ_ground"])
    assert_steps_add_up(results)


def test_unlabelled_step_gives_the_pixels_to_the_segment_of_their_class():
    gt = ground_truth(things=[(1, SQUARE)])
    three_rows = (slice(2, 5), slice(2, 6))  # 12 of 16 pixels; the last row is left "other"
    inputs = combiner_inputs([(1, 0.9, three_rows)], labels=[(0, SQUARE)])
    errors, results = analyze(inputs, gt, (0.5, 0.5, 1))
    assert results[3]["PQ_square"] == pytest.approx(75.0)
    assert results[4]["PQ_square"] == pytest.approx(100.0)
    assert errors["decisions"][3].tolist() == [0, 1, 0, 0, 0, 0]
    assert errors["unlabelled_pixels"].tolist() == [0, 4, 0, 0, 0, 0]
    assert_steps_add_up(results)


def test_confusion_counts_matched_pairs_of_any_classes():
    gt = ground_truth(things=[(1, SQUARE), (2, TRIANGLE)])
    inputs = combiner_inputs(
        [(1, 0.9, SQUARE), (0, 0.8, TRIANGLE)], labels=[(0, SQUARE), (0, TRIANGLE)]
    )
    errors, _ = analyze(inputs, gt, (0.5, 0.5, 1))
    expected = np.zeros((6, 6), dtype=np.int64)
    expected[1, 1] = expected[2, 0] = expected[3, 3] = 1  # square, triangle as circle, sky
    assert errors["confusion"].tolist() == expected.tolist()
    assert len(STEPS) == 4
