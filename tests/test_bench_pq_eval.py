"""The PQ evaluation benchmark's own logic: thread counts, id renaming, the equality check."""

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_pq_eval  # noqa: E402  (benchmarks/ is put on the path just above)


@pytest.mark.parametrize(
    "cores, expected", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])]
)
def test_scaling_line_goes_from_one_thread_to_every_usable_core(cores, expected):
    assert bench_pq_eval.thread_counts(cores) == expected


def test_random_ids_rename_the_same_segments():
    rng = np.random.default_rng(0)
    _, _, id_map, info = bench_pq_eval.make_image(rng, 48, 64)
    image = {"image_id": 1, "file_name": "1.jpg"}
    [(_, output)] = bench_pq_eval.with_random_ids([(image, {"panoptic_seg": (id_map, info)})], rng)
    new_map, new_info = output["panoptic_seg"]
    assert new_map.dtype == torch.int32 and max(s["id"] for s in new_info) > len(info)
    for old, new in zip(info, new_info):
        assert {k: v for k, v in old.items() if k != "id"} == {
            k: v for k, v in new.items() if k != "id"
        }
        assert torch.equal(id_map == old["id"], new_map == new["id"])
    assert torch.equal(id_map == 0, new_map == 0)


def test_results_that_differ_are_refused():
    same = {g: {"pq": 0.5, "sq": 0.75, "rq": 2 / 3} for g in ("All", "Things", "Stuff")}
    other = {g: dict(v) for g, v in same.items()}
    other["Stuff"]["rq"] += 1e-6
    bench_pq_eval.check_equal({"a": same, "b": same}, "a")
    with pytest.raises(AssertionError, match="b Stuff rq differs from a"):
        bench_pq_eval.check_equal({"a": same, "b": other}, "a")
