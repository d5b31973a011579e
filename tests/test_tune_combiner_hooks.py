"""The combiner's per-instance overlap thresholds and per-label stuff limits (the hook the PQ
error analysis relaxes decisions through), against an obviously-correct Python loop."""

import pytest
import torch
from test_combiner import random_case

from panoptic_fpn_ext.modeling import combine_panoptic


def reference_combine(instances, semantic, overlaps, limits, score_threshold):
    """Detectron2's loop, with instance ``i``'s own overlap threshold ``overlaps[i]`` and label
    ``l``'s own stuff limit ``limits[l]`` (Python floats)."""
    panoptic = torch.zeros(semantic.shape, dtype=torch.int32)
    info, next_id = [], 1
    for i in torch.argsort(-instances.scores).tolist():
        if instances.scores[i].item() < score_threshold:
            break
        mask = instances.pred_masks[i]
        area = int(mask.sum())
        taken = int((mask & (panoptic > 0)).sum())
        if area == 0 or taken * 1.0 / area > overlaps[i]:
            continue
        panoptic[mask & (panoptic == 0)] = next_id
        info.append({"id": next_id, "isthing": True, "instance_id": i})
        next_id += 1
    for label in torch.unique(semantic).tolist():
        free = (semantic == label) & (panoptic == 0)
        if label == 0 or int(free.sum()) < limits[label]:
            continue
        panoptic[free] = next_id
        info.append({"id": next_id, "isthing": False, "category_id": label})
        next_id += 1
    return panoptic, info


def _short(info):
    """``segments_info`` with the keys :func:`reference_combine` writes."""
    return [
        {"id": s["id"], "isthing": s["isthing"]}
        | ({"instance_id": s["instance_id"]} if s["isthing"] else {"category_id": s["category_id"]})
        for s in info
    ]


@pytest.mark.parametrize("method", ["sequential", "parallel"])
@pytest.mark.parametrize("seed", range(6))
def test_per_instance_and_per_label_thresholds_match_the_reference_loop(method, seed):
    instances, semantic, boxes = random_case(seed, 14)
    g = torch.Generator().manual_seed(100 + seed)
    overlaps = torch.rand(14, generator=g, dtype=torch.float64)
    overlaps[::3] = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).double()
    limits = torch.randint(1, 120, (semantic.max() + 3,), generator=g).double()
    expected_map, expected_info = reference_combine(
        instances, semantic, overlaps.tolist(), limits.tolist(), 0.2
    )
    mask_boxes = boxes if method == "sequential" else None
    out_map, out_info = combine_panoptic(
        instances, semantic, overlaps, limits, 0.2, mask_boxes=mask_boxes, method=method
    )
    assert torch.equal(out_map, expected_map)
    assert _short(out_info) == expected_info


@pytest.mark.parametrize("method", ["sequential", "parallel"])
@pytest.mark.parametrize("thresholds", [(0.5, 20, 0.3), (0.0, 1, 0.0), (1.0, 100, 0.6)])
def test_equal_tensors_give_the_scalar_output(method, thresholds):
    instances, semantic, _ = random_case(3, 12)
    overlap, limit, score = thresholds
    expected = combine_panoptic(instances, semantic, *thresholds, method=method)
    as_tensors = combine_panoptic(
        instances,
        semantic,
        torch.full((12,), overlap, dtype=torch.float64),
        torch.full((int(semantic.max()) + 1,), limit, dtype=torch.float64),
        score,
        method=method,
    )
    assert torch.equal(as_tensors[0], expected[0])
    assert as_tensors[1] == expected[1]


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_threshold_tensors_of_the_wrong_size_are_refused(method):
    instances, semantic, _ = random_case(1, 5)
    with pytest.raises(ValueError, match=r"overlap_threshold has shape \(4,\); .* \(5,\)"):
        combine_panoptic(instances, semantic, torch.zeros(4), 20, 0.1, method=method)
    short = torch.ones(int(semantic.max()))  # one label short
    with pytest.raises(ValueError, match="stuff_area_limit has shape"):
        combine_panoptic(instances, semantic, 0.5, short, 0.1, method=method)


@pytest.mark.gpu
def test_per_instance_and_per_label_thresholds_on_cuda():
    instances, semantic, _ = random_case(4, 14)
    overlaps = torch.rand(14, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    limits = torch.arange(int(semantic.max()) + 1, dtype=torch.float64) * 20 + 1
    expected = reference_combine(instances, semantic, overlaps.tolist(), limits.tolist(), 0.2)
    cuda = instances.to("cuda")
    out_map, out_info = combine_panoptic(
        cuda, semantic.cuda(), overlaps.cuda(), limits.cuda(), 0.2, method="parallel"
    )
    assert torch.equal(out_map.cpu(), expected[0])
    assert _short(out_info) == expected[1]
