"""combine_panoptic gives exactly Detectron2's combine_semantic_and_instance_outputs output, keeps
the panoptic invariants on random inputs, and is selectable through its registry."""

import os
import sys
from typing import Tuple

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers.mask_ops import _do_paste_mask, paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.modeling import (
    PANOPTIC_COMBINER_REGISTRY,
    PanopticHeuristicCombiner,
    build_panoptic_combiner,
    combine_panoptic,
    paste_regions,
)
from panoptic_fpn_ext.modeling import fixed_point, placement, post_processing
from panoptic_fpn_ext.registration import register_once

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_combiner  # noqa: E402  (benchmarks/ is put on the path just above)

THRESHOLD_SETS = [(0.5, 20, 0.3), (0.0, 0, 0.0), (1.0, 100, 0.6), (0.3, 1, 0.9)]
THRESHOLDS_D2 = (0.5, 4096, 0.5)  # Detectron2's defaults: overlap, stuff area, score


def random_case(
    seed: int,
    n: int,
    h: int = 37,
    w: int = 53,
    num_labels: int = 5,
    tie_scores: bool = False,
    density: float = 0.8,
) -> Tuple[Instances, torch.Tensor, torch.Tensor]:
    """Random instances whose masks lie in random boxes, and blocky semantic labels.

    Instance 1 (if n > 2) repeats instance 0's mask (fully covered by it or, with equal scores,
    covering it), instance 2 is empty.

    Returns:
        instances (bool pred_masks (n, h, w), scores, pred_classes), int64 (h, w) labels,
        int64 (n, 4) boxes (x0, y0, x1, y1) containing the masks.
    """
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    boxes = torch.zeros(n, 4, dtype=torch.int64)
    for k in range(n):
        x0, x_len = torch.randint(0, w, (2,), generator=g).tolist()
        y0, y_len = torch.randint(0, h, (2,), generator=g).tolist()
        x1, y1 = min(w, x0 + x_len), min(h, y0 + y_len)
        masks[k, y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=g) < density
        boxes[k] = torch.tensor([x0, y0, x1, y1])
    if n > 2:
        masks[1], boxes[1] = masks[0], boxes[0]
        masks[2] = False
    scores = torch.rand(n, generator=g)
    if tie_scores:
        scores = (scores * 3).floor() / 3
    instances = Instances((h, w))
    instances.pred_masks = masks
    instances.scores = scores
    instances.pred_classes = torch.randint(0, 4, (n,), generator=g)
    semantic = torch.randint(0, num_labels, (h // 4 + 1, w // 4 + 1), generator=g)
    semantic = semantic.repeat_interleave(4, 0)[:h].repeat_interleave(4, 1)[:, :w].contiguous()
    return instances, semantic, boxes


def assert_matches_detectron2(instances, semantic, thresholds, mask_boxes=None, method="auto"):
    """combine_panoptic's output equals Detectron2's; returns Detectron2's segments_info."""
    ref_map, ref_info = combine_semantic_and_instance_outputs(instances, semantic, *thresholds)
    out_map, out_info = combine_panoptic(
        instances, semantic, *thresholds, mask_boxes=mask_boxes, method=method
    )
    assert out_map.dtype == ref_map.dtype == torch.int32
    assert out_map.shape == ref_map.shape
    assert torch.equal(out_map, ref_map)
    assert out_info == ref_info
    return ref_info


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tie_scores", [False, True])
@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_matches_detectron2_on_random_inputs(seed, tie_scores, method):
    n = [0, 1, 3, 8, 20, 40][seed % 6]
    instances, semantic, boxes = random_case(seed, n, tie_scores=tie_scores)
    for thresholds in THRESHOLD_SETS:
        assert_matches_detectron2(instances, semantic, thresholds, method=method)
        assert_matches_detectron2(instances, semantic, thresholds, boxes, method)


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_equal_scores_come_out_in_detectron2_order(method):
    instances, semantic, _ = random_case(4, 30, tie_scores=True)
    info = assert_matches_detectron2(instances, semantic, (0.5, 20, 0.0), method=method)
    things = [s for s in info if s["isthing"]]
    assert len(things) >= 5  # not vacuous: many kept, some with equal scores
    assert len({s["score"] for s in things}) < len(things)


def test_loose_boxes_and_boxes_outside_the_image_give_the_same_output():
    instances, semantic, boxes = random_case(7, 15)
    loose = boxes + torch.tensor([-3, -5, 4, 100])  # clipped to the image inside
    assert_matches_detectron2(instances, semantic, (0.5, 20, 0.3), mask_boxes=loose)


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_all_other_map_fully_covered_instance_and_zero_area_limit(method):
    instances, semantic, _ = random_case(3, 10)
    other = torch.zeros_like(semantic)
    info = assert_matches_detectron2(instances, other, (0.5, 0, 0.2), method=method)
    assert info and all(s["isthing"] for s in info)  # "other" never becomes a stuff segment
    # one instance covering the image: a later copy of it is dropped, and a present label with
    # no free pixels still gets a zero-area segment when the limit is 0 (Detectron2's rule)
    full = Instances(semantic.shape)
    full.pred_masks = torch.ones(2, *semantic.shape, dtype=torch.bool)
    full.scores = torch.tensor([0.9, 0.8])
    full.pred_classes = torch.tensor([0, 1])
    info = assert_matches_detectron2(full, semantic, (0.5, 0, 0.5), method=method)
    assert [s["instance_id"] for s in info if s["isthing"]] == [0]
    assert {s["area"] for s in info if not s["isthing"]} == {0}


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_thresholds_compare_in_float64_like_detectron2(method):
    h, w = 4, 6
    semantic = torch.ones(h, w, dtype=torch.int64)
    instances = Instances((h, w))
    instances.pred_masks = torch.zeros(3, h, w, dtype=torch.bool)
    instances.pred_masks[0, :2, :2] = True  # 4 px
    instances.pred_masks[1, :2, 1:3] = True  # 4 px, 2 of them taken: ratio exactly 0.5
    instances.pred_masks[2, 3, :] = True
    threshold = float(torch.tensor(0.3)) + 1e-9  # rounds down to float32
    assert float(torch.tensor(threshold)) < threshold
    instances.scores = torch.tensor([0.9, 0.8, threshold])  # the last is below in float64
    instances.pred_classes = torch.tensor([1, 2, 3])
    info = assert_matches_detectron2(instances, semantic, (0.5, 18, threshold), method=method)
    assert [s["instance_id"] for s in info if s["isthing"]] == [0, 1]  # ratio 0.5 is kept
    # 24 px - 6 claimed: 18 free pixels of label 1, exactly the area limit, which keeps them
    stuff = [s for s in info if not s["isthing"]]
    assert stuff == [{"id": 3, "isthing": False, "category_id": 1, "area": 18}]


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_non_bool_masks_and_odd_sizes(method):
    instances, semantic, boxes = random_case(5, 12, h=30, w=29)
    instances.pred_masks = instances.pred_masks.float() * 0.7  # nonzero = in the mask
    assert_matches_detectron2(instances, semantic, (0.5, 10, 0.2), method=method)
    assert_matches_detectron2(instances, semantic, (0.5, 10, 0.2), boxes, method)
    tiny, semantic, _ = random_case(6, 4, h=1, w=1)
    assert_matches_detectron2(tiny, semantic, (0.5, 0, 0.0), method=method)
    empty, semantic, _ = random_case(6, 0)
    assert_matches_detectron2(empty, semantic, (0.5, 0, 0.0), method=method)


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_thousands_of_kept_instances(method):
    # one pixel each, all kept: thousands of thing segments in one map
    n, h, w = 4200, 64, 80
    instances, semantic, _ = random_case(8, 0, h, w)
    pixels = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))[:n]
    instances = Instances((h, w))
    instances.pred_masks = torch.zeros(n, h * w, dtype=torch.bool)
    instances.pred_masks[torch.arange(n), pixels] = True
    instances.pred_masks = instances.pred_masks.view(n, h, w)
    instances.scores = torch.rand(n, generator=torch.Generator().manual_seed(1))
    instances.pred_classes = torch.zeros(n, dtype=torch.int64)
    x, y = pixels % w, pixels // w
    boxes = torch.stack([x, y, x + 1, y + 1], dim=1)
    info = assert_matches_detectron2(instances, semantic, (0.5, 2, 0.0), boxes, method)
    assert sum(s["isthing"] for s in info) == n


def test_owner_map_beyond_int16_segments(monkeypatch):
    # more candidates than an int16 owner map holds take an int32 one (lowered limit here: the
    # real one, 32767, needs masks of over a gigabyte)
    monkeypatch.setattr(placement, "_INT16_SEGMENTS", 5)
    instances, semantic, boxes = random_case(12, 40, density=0.3)
    info = assert_matches_detectron2(instances, semantic, (0.5, 2, 0.0), boxes, "sequential")
    assert sum(s["isthing"] for s in info) > 5


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_label_dtypes_and_thread_counts(dtype, threads):
    # the compiled loops read each label dtype as it is; masks are located by threads - 1
    # workers and the calling thread
    instances, semantic, boxes = random_case(13, 40, num_labels=9)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for thresholds in THRESHOLD_SETS:
            assert_matches_detectron2(instances, semantic.to(dtype), thresholds)
    finally:
        torch.set_num_threads(previous)


def test_labels_beyond_the_first_pass_capacity():
    # labels above the counters the first pass allocates are counted in a second pass
    instances, semantic, boxes = random_case(14, 20, num_labels=3)
    large = semantic * 3000  # 0, 3000, 6000 (> 4096)
    assert int(large.max()) >= placement._LABEL_CAPACITY
    for thresholds in THRESHOLD_SETS:
        info = assert_matches_detectron2(instances, large, thresholds, boxes)
    assert 6000 in [s["category_id"] for s in info if not s["isthing"]]


@pytest.mark.parametrize("bad_label", [-1, 2**31 - 1])
def test_labels_outside_the_int32_codes_are_refused(bad_label):
    instances, semantic, boxes = random_case(15, 4)
    semantic[3, 5] = bad_label
    with pytest.raises(ValueError, match=f"semantic_results has labels from .*{bad_label}"):
        combine_panoptic(instances, semantic, 0.5, 10, 0.5, method="sequential")


def test_float_mask_boxes_are_refused():
    instances, semantic, boxes = random_case(1, 3)
    with pytest.raises(ValueError, match="mask_boxes"):
        combine_panoptic(instances, semantic, 0.5, 10, 0.5, mask_boxes=boxes.float())


@pytest.mark.parametrize("width", [64, 68, 66, 67])  # read as int64, int32, int16, uint8 words
def test_locate_masks_gives_tight_boxes(width):
    instances, _, _ = random_case(11, 31, h=41, w=width, density=0.3)
    masks = instances.pred_masks[1:]  # a view at an odd offset: falls back to narrower words
    located = placement.locate_masks(masks, list(range(len(masks)))).tolist()
    for mask, (x0, y0, x1, y1) in zip(masks, located):
        if not mask.any():
            assert (x0, y0, x1, y1) == (0, 0, 0, 0)
            continue
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.numerics
@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 60), st.integers(1, 30), st.integers(1, 30)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    specials=st.sampled_from(["none", "nan", "inf", "both"]),
    transposed=st.booleans(),
)
def test_semantic_labels_equal_argmax_with_ties_and_non_finite_logits(
    seed, shape, dtype, specials, transposed
):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 3, shape, generator=g).to(dtype)  # many tied maxima
    for kind, value in (("nan", float("nan")), ("inf", float("inf"))):
        if specials in (kind, "both"):
            logits[torch.rand(shape, generator=g) < 0.1] = value
    if transposed:
        logits = logits.transpose(1, 2)  # not contiguous
    labels = post_processing.semantic_labels(logits)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, logits.argmax(dim=0))


@pytest.mark.parametrize("seed", range(3))
def test_paste_regions_contain_masks_pasted_by_detectron2(seed):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 40, 60, 90
    corner = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 5
    boxes = torch.cat([corner, corner + 0.3 + torch.rand(n, 2, generator=g) * 40], dim=1)
    logits = torch.randn(n, 28, 28, generator=g) * 30  # many saturated probabilities
    probabilities = torch.sigmoid(logits)
    probabilities[0] = 1.0
    regions = paste_regions(boxes, h, w)
    outside = torch.ones(n, h, w, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(regions.tolist()):
        outside[k, y0:y1, x0:x1] = False
    # CPU pasting (one box at a time, inside its region) and the GPU route (whole image, via
    # the private helper that paste_masks_in_image calls there)
    cpu = paste_masks_in_image(probabilities, boxes, (h, w))
    gpu, _ = _do_paste_mask(probabilities[:, None], boxes, h, w, skip_empty=False)
    assert cpu.any()
    assert not (cpu & outside).any()
    assert not ((gpu >= 0.5) & outside).any()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 12),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    num_labels=st.integers(1, 300),
    density=st.floats(0.0, 1.0),
    tie_scores=st.booleans(),
    overlap=st.floats(0.0, 1.0),
    area_limit=st.integers(0, 60),
    score_threshold=st.floats(0.0, 1.0),
    method=st.sampled_from(["sequential", "parallel"]),
)
def test_invariants_property(
    seed, n, size, num_labels, density, tie_scores, overlap, area_limit, score_threshold, method
):
    h, w = size
    instances, semantic, boxes = random_case(seed, n, h, w, num_labels, tie_scores, density)
    thresholds = (overlap, area_limit, score_threshold)
    info = assert_matches_detectron2(instances, semantic, thresholds, boxes, method)
    panoptic, _ = combine_panoptic(instances, semantic, *thresholds)
    masks = instances.pred_masks

    ids = [s["id"] for s in info]
    assert ids == list(range(1, len(info) + 1))  # unique, 1..K
    assert set(torch.unique(panoptic).tolist()) <= {0, *ids}  # one segment (or none) per pixel
    things = [s for s in info if s["isthing"]]
    assert info[: len(things)] == things  # things first
    assert [s["score"] for s in things] == sorted((s["score"] for s in things), reverse=True)
    kept = torch.zeros(h, w, dtype=torch.bool)
    for s in things:
        own = panoptic == s["id"]
        mask = masks[s["instance_id"]]
        area = int(mask.sum())
        assert s["score"] >= score_threshold and area > 0
        assert bool(mask[own].all())  # a thing's pixels are its own mask's
        assert area - int(own.sum()) <= overlap * area + 1e-9  # lost at most the allowed share
        kept |= mask
    for s in info[len(things) :]:
        own = panoptic == s["id"]
        assert s["category_id"] != 0 and s["area"] >= area_limit
        assert s["area"] == int(own.sum())
        assert bool((semantic[own] == s["category_id"]).all())
        assert not bool((own & kept).any())  # stuff only fills pixels no kept thing covers


def test_registry_builds_the_configured_combiner():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 7
    cfg.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.25
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.4
    combiner = build_panoptic_combiner(cfg)
    assert isinstance(combiner, PanopticHeuristicCombiner)
    instances, semantic, boxes = random_case(2, 10)
    expected = combine_semantic_and_instance_outputs(instances, semantic, 0.25, 7, 0.4)
    out = combiner(instances, semantic, mask_boxes=boxes)
    assert torch.equal(out[0], expected[0]) and out[1] == expected[1]


def test_a_registered_combiner_is_selected_from_yaml_and_unknown_names_fail(tmp_path):
    @register_once(PANOPTIC_COMBINER_REGISTRY, name="TestStuffOnlyCombiner")
    class StuffOnly:
        def __init__(self, cfg):
            self.cfg = cfg

        def __call__(self, instances, semantic, mask_boxes=None):
            return semantic.to(torch.int32), []

    yaml = tmp_path / "custom.yaml"
    yaml.write_text("MODEL:\n  PANOPTIC_FPN_EXT:\n    COMBINER_NAME: TestStuffOnlyCombiner\n")
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, str(yaml))
    assert isinstance(build_panoptic_combiner(cfg), StuffOnly)
    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "NoSuchCombiner"
    with pytest.raises(ValueError, match="MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME"):
        build_panoptic_combiner(cfg)


def test_unknown_method_and_sequential_off_cpu_are_refused():
    instances, semantic, _ = random_case(1, 3)
    with pytest.raises(ValueError, match="method='serial'"):
        combine_panoptic(instances, semantic, 0.5, 10, 0.5, method="serial")
    with pytest.raises(ValueError, match="on CPU tensors; semantic_results is on meta"):
        combine_panoptic(instances, semantic.to("meta"), 0.5, 10, 0.5, method="sequential")


def test_auto_method_is_sequential_on_cpu(monkeypatch):
    def refuse(*args):
        raise AssertionError("the parallel path ran on CPU tensors")

    monkeypatch.setattr(post_processing, "combine_parallel", refuse)
    instances, semantic, _ = random_case(2, 8)
    assert_matches_detectron2(instances, semantic, (0.5, 20, 0.3))


@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_a_chain_of_overlaps_takes_one_round_per_instance_and_matches_detectron2(n, method):
    # the slowest case for the fixed point: each decision flips the next one
    instances, semantic = bench_combiner.chain_case(n)
    info = assert_matches_detectron2(instances, semantic, THRESHOLDS_D2, method=method)
    assert [s["instance_id"] for s in info if s["isthing"]] == list(range(0, n, 2))
    masks, scores = instances.pred_masks, instances.scores
    _, rounds = fixed_point.combine_parallel(masks, scores, semantic, *THRESHOLDS_D2)
    assert rounds == n  # within the proven bound of n + 1


def test_fixed_point_rounds_are_few_on_random_inputs():
    # 100 overlapping instances of which 15 are kept; the bound N + 1 would allow 101 rounds
    instances, semantic, _ = random_case(9, 100, h=64, w=80, density=0.9)
    placed, rounds = fixed_point.combine_parallel(
        instances.pred_masks, instances.scores, semantic, 0.5, 20, 0.0
    )
    assert sum(placed.keep) >= 10  # not vacuous: many kept, and many overlap
    assert rounds <= 6


def test_parallel_operator_count_does_not_grow_with_instances():
    per_round = bench_combiner.operators_per_round()
    counts = {}
    for n in (10, 100):
        instances, semantic, _ = random_case(n, n, h=64, w=80, density=0.9)
        counts[n] = bench_combiner.parallel_operators(instances, semantic, (0.5, 20, 0.0))
    (ops_10, rounds_10), (ops_100, rounds_100) = counts[10], counts[100]
    assert rounds_100 > 1 and 0 < per_round < 40
    assert ops_100 - per_round * rounds_100 == ops_10 - per_round * rounds_10
    # the per-round cost is one number: a third chain length falls on the same line
    ops_5, rounds_5 = bench_combiner.parallel_operators(*bench_combiner.chain_case(5))
    ops_11, rounds_11 = bench_combiner.parallel_operators(*bench_combiner.chain_case(11))
    assert ops_11 - ops_5 == per_round * (rounds_11 - rounds_5)


@pytest.mark.gpu
def test_cuda_semantic_labels_equal_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (54, 97, 131), generator=g).float()
    logits[torch.rand(logits.shape, generator=g) < 0.05] = float("nan")
    logits = logits.cuda()
    assert torch.equal(post_processing.semantic_labels(logits), logits.argmax(dim=0))


@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(6))
def test_cuda_matches_detectron2_on_random_inputs(seed):
    n = [0, 1, 3, 8, 20, 40][seed]
    instances, semantic, boxes = random_case(seed, n, tie_scores=seed % 2 == 1)
    instances, semantic, boxes = instances.to("cuda"), semantic.cuda(), boxes.cuda()
    for thresholds in THRESHOLD_SETS:
        assert_matches_detectron2(instances, semantic, thresholds)
        assert_matches_detectron2(instances, semantic, thresholds, mask_boxes=boxes)


@pytest.mark.gpu
def test_cuda_syncs_per_image_grow_only_with_the_fixed_point_rounds():
    def syncs_beyond_rounds(n: int) -> int:
        instances, semantic, boxes = random_case(n, n, h=64, w=80, density=0.9)
        instances, semantic, boxes = instances.to("cuda"), semantic.cuda(), boxes.cuda()
        assert_matches_detectron2(instances, semantic, (0.5, 20, 0.0), mask_boxes=boxes)
        masks = instances.pred_masks.bool()
        _, rounds = fixed_point.combine_parallel(masks, instances.scores, semantic, 0.5, 20, 0.0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                combine_panoptic(instances, semantic, 0.5, 20, 0.0, mask_boxes=boxes)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len(record) - rounds  # one convergence test per round

    assert syncs_beyond_rounds(40) == syncs_beyond_rounds(5)
