"""combine_panoptic gives exactly Detectron2's combine_semantic_and_instance_outputs output."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic_fpn_ext import add_panoptic_fpn_ext_config
from panoptic_fpn_ext.modeling import (
    PANOPTIC_COMBINER_REGISTRY,
    build_panoptic_combiner,
    combine_panoptic,
)
from panoptic_fpn_ext.modeling.post_processing import mask_crop_boxes
from panoptic_fpn_ext.registration import register_once


def random_case(seed, n, h=37, w=53, num_labels=5, tie_scores=False):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n):
        y0, x0 = torch.randint(0, h, (2,), generator=g).tolist()
        y1 = min(h, y0 + int(torch.randint(0, h, (1,), generator=g)))
        x1 = min(w, x0 + int(torch.randint(0, w, (1,), generator=g)))
        masks[k, y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=g) > 0.2
    if n > 2:
        masks[1] = masks[0]  # fully covered by an earlier (or equal-score) instance
        masks[2] = False  # empty mask
    scores = torch.rand(n, generator=g)
    if tie_scores:
        scores = (scores * 3).floor() / 3
    instances = Instances((h, w))
    instances.pred_masks = masks
    instances.scores = scores
    instances.pred_classes = torch.randint(0, 4, (n,), generator=g)
    semantic = torch.randint(0, num_labels, (h // 4 + 1, w // 4 + 1), generator=g)
    semantic = semantic.repeat_interleave(4, 0)[:h].repeat_interleave(4, 1)[:, :w].contiguous()
    return instances, semantic


def assert_same(instances, semantic, *thresholds):
    ref_map, ref_info = combine_semantic_and_instance_outputs(instances, semantic, *thresholds)
    out_map, out_info = combine_panoptic(instances, semantic, *thresholds)
    assert out_map.dtype == ref_map.dtype == torch.int32
    assert torch.equal(out_map, ref_map)
    assert out_info == ref_info
    return ref_info


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tie_scores", [False, True])
def test_matches_detectron2_on_random_inputs(seed, tie_scores):
    n = [0, 1, 3, 8, 20, 40][seed % 6]
    instances, semantic = random_case(seed, n, tie_scores=tie_scores)
    for thresholds in [(0.5, 20, 0.3), (0.0, 0, 0.0), (1.0, 100, 0.6), (0.3, 1, 0.9)]:
        assert_same(instances, semantic, *thresholds)


def test_all_other_map_and_zero_area_limit():
    instances, semantic = random_case(3, 10)
    info = assert_same(instances, torch.zeros_like(semantic), 0.5, 0, 0.2)
    assert all(s["isthing"] for s in info)  # "other" never becomes a stuff segment
    # a present label with no free pixels still gets a (zero-area) segment when the limit is 0
    full = Instances(semantic.shape)
    full.pred_masks = torch.ones(1, *semantic.shape, dtype=torch.bool)
    full.scores = torch.ones(1)
    full.pred_classes = torch.zeros(1, dtype=torch.int64)
    info = assert_same(full, semantic, 0.5, 0, 0.5)
    assert any(s["area"] == 0 for s in info if not s["isthing"])


def test_non_multiple_of_8_width_and_float_masks():
    instances, semantic = random_case(5, 12, h=30, w=29)
    instances.pred_masks = instances.pred_masks.float() * 0.7  # nonzero = in the mask
    assert_same(instances, semantic, 0.5, 10, 0.2)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(0, 15),
    overlap=st.floats(0, 1),
    area=st.integers(0, 60),
    score=st.floats(0, 1),
)
def test_invariants_and_parity_property(seed, n, overlap, area, score):
    instances, semantic = random_case(seed, n, h=24, w=31)
    info = assert_same(instances, semantic, overlap, area, score)
    pan, _ = combine_panoptic(instances, semantic, overlap, area, score)
    ids = [s["id"] for s in info]
    assert ids == list(range(1, len(info) + 1))  # unique, consecutive
    assert set(torch.unique(pan).tolist()) - {0} <= set(ids)
    for s in info:
        if not s["isthing"]:
            assert s["category_id"] != 0 and s["area"] >= area
            assert s["area"] == int((pan == s["id"]).sum())
        else:
            mask = instances.pred_masks[s["instance_id"]]
            assert s["score"] >= score
            # the pixels it got are its own; what it lost to earlier segments is within the rule
            assert bool(mask[pan == s["id"]].all())
            assert (mask.sum() - (pan == s["id"]).sum()) <= overlap * mask.sum() + 1e-9


def test_crop_boxes_contain_every_mask():
    instances, _ = random_case(11, 30, h=41, w=67)
    masks = instances.pred_masks
    for mask, (y0, y1, x0, x1) in zip(masks, mask_crop_boxes(masks)):
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not bool((mask & ~inside).any())
        if mask.any():
            ys = torch.nonzero(mask)[:, 0]
            assert (y0, y1) == (int(ys.min()), int(ys.max()) + 1)  # rows are exact


def test_registry_selects_combiner_from_config():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 7
    combiner = build_panoptic_combiner(cfg)
    assert combiner.stuff_area_limit == 7

    @register_once(PANOPTIC_COMBINER_REGISTRY, name="TestOnlyStuffCombiner")
    class OnlyStuff:
        def __init__(self, cfg):
            self.cfg = cfg

        def __call__(self, instances, semantic):
            return semantic.to(torch.int32), []

    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "TestOnlyStuffCombiner"
    assert isinstance(build_panoptic_combiner(cfg), OnlyStuff)
