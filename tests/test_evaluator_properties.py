"""Property-based tests of PanopticQualityEvaluator as Detectron2 drives it (process/evaluate):
random images, batchings and orders never crash and give results within their ranges."""

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from float_reference import pq_tolerance, within
from panoptic_eval_cases import (
    CATEGORIES,
    PanopticImage,
    model_input,
    model_output,
    random_image,
    register_case_dataset,
)

from panoptic_fpn_ext.evaluation import PanopticQualityEvaluator

_names = itertools.count()


@st.composite
def evaluation_runs(draw):
    """Random images (some with an empty prediction), a batch size and a processing order."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = []
    for image_id in range(draw(st.integers(1, 5))):
        height, width = draw(st.integers(2, 20)), draw(st.integers(2, 20))
        image = random_image(rng, image_id, height, width)
        if draw(st.booleans()) and draw(st.booleans()):  # ~1 in 4: nothing predicted
            image = PanopticImage(image_id, image.gt_ids, image.gt_segments, 0 * image.gt_ids, [])
        images.append(image)
    order = draw(st.permutations(range(len(images))))
    return images, draw(st.integers(1, 3)), order


def _evaluate(name, root, images, batch_size, order):
    evaluator = PanopticQualityEvaluator(name)
    evaluator.reset()
    ordered = [images[i] for i in order]
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start : start + batch_size]
        evaluator.process([model_input(i, root) for i in batch], [model_output(i) for i in batch])
    return evaluator.evaluate()["panoptic_seg"]


def _same(a, b):
    both_nan = math.isnan(a) and math.isnan(b)
    return both_nan or within("PQ/SQ/RQ, other order (%)", abs(a - b), pq_tolerance(100))


@settings(max_examples=30, deadline=None)
@given(run=evaluation_runs())
def test_random_runs_stay_in_range_and_do_not_depend_on_order(run, tmp_path_factory):
    images, batch_size, order = run
    root = str(tmp_path_factory.mktemp("case"))
    name = f"test_evaluator_properties_{next(_names)}"
    register_case_dataset(name, root, images)

    results = _evaluate(name, root, images, batch_size, order)
    for key, value in results.items():
        assert math.isnan(value) or 0.0 <= value <= 100.0, (key, value)
    for category in CATEGORIES:  # PQ = SQ x RQ per category, where it is defined
        pq, sq, rq = (results[f"{m}_{category['name']}"] for m in ("PQ", "SQ", "RQ"))
        product = sq * rq / 100.0
        assert math.isnan(pq) or within("PQ - SQ x RQ (%)", abs(pq - product), pq_tolerance(100))
    in_order = _evaluate(name, root, images, 1, range(len(images)))
    assert all(_same(results[k], in_order[k]) for k in results)
