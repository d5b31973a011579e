"""PQ statistics: every rule of the reference definition, checked to float64 rounding
(``float_reference.pq_tolerance``) against panopticapi's
pq_compute (the reference implementation), cityscapesscripts' (the same algorithm) and hotcoco's,
plus bad inputs and random maps."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from float_reference import summation_bound
from png_files import encode_png
from panoptic_eval_cases import (
    ISTHING,
    NUM_CATEGORIES,
    REFERENCES,
    NUM_STUFF,
    NUM_THINGS,
    PanopticImage,
    assert_matches_reference,
    our_statistics,
    random_image,
    reference_pq,
    segment,
)
from panoptic_fpn_ext.data import PanopticDataError, id2rgb
from panoptic_fpn_ext.evaluation import (
    PanopticPredictionError,
    PQStatistics,
    image_pq_statistics,
    pq_per_category,
    pq_summary,
    segments_from_info,
)
from panoptic_fpn_ext.evaluation import counting
from panoptic_fpn_ext.evaluation.id_index import MAX_SEGMENT_ID, segment_index_map
from panoptic_fpn_ext.evaluation.png import read_filtered_png

PERSON, CAR, DOG, BIKE, ROAD, SKY, GRASS, WALL = range(8)  # category indices of CATEGORIES


def blank(height=10, width=12):
    return np.zeros((height, width), dtype=np.int64)


def counts(statistics: PQStatistics, index: int):
    return (
        int(statistics.tp[index]),
        int(statistics.fp[index]),
        int(statistics.fn[index]),
        float(statistics.iou_sum[index]),
    )


# --- one case per rule; each is checked against the reference and for its expected counts -----


def iou_cases():
    """GT car of 10x12 = 120 px on a wall; car predictions of 120 px shifted right by 3, 4 and 5
    columns: IoU 90/150 = 0.6 (match), 80/160 = 0.5 exactly (no match: IoU must exceed 0.5),
    70/170."""
    images = []
    for image_id, shift in enumerate((3, 4, 5)):
        gt, pred = blank(10, 20), blank(10, 20)
        gt[:] = 2
        gt[:, :12] = 1
        pred[:, shift : shift + 12] = 1
        gt_segments = [segment(1, CAR), segment(2, WALL)]
        images.append(PanopticImage(image_id, gt, gt_segments, pred, [segment(1, CAR)]))
    return images


def void_case():
    """The prediction covers 60 of the GT person's 100 px and 60 px of void: IoU 60/100 with the
    void part left out of the union (60/160 otherwise)."""
    gt, pred = blank(10, 20), blank(10, 20)
    gt[:, :10] = 7
    pred[:, 4:16] = 3
    return PanopticImage(0, gt, [segment(7, PERSON)], pred, [segment(3, PERSON)])


def void_fp_cases():
    """An unmatched prediction with 11 of 20 px on void is ignored; with 10 of 20 it is a FP."""
    images = []
    for image_id, on_void in enumerate((11, 10)):
        gt, pred = blank(), blank()
        gt[:, 6:] = 1  # road; columns 0..5 are void
        flat = pred.reshape(-1)  # a view
        flat[np.flatnonzero(gt.reshape(-1) == 0)[:on_void]] = 2
        flat[np.flatnonzero(gt.reshape(-1) == 1)[: 20 - on_void]] = 2
        images.append(PanopticImage(image_id, gt, [segment(1, ROAD)], pred, [segment(2, DOG)]))
    return images


def crowd_case():
    """A crowd of cars (rows 0-4) on a road. Predictions: a car entirely on the crowd (never a
    match, not a FP), a car 8/12 on the crowd (not a FP), a dog 8/12 on the crowd (a FP: the crowd
    is of another category), a car on the road (a FP). The crowd is never a FN."""
    gt, pred = blank(), blank()
    gt[:] = 1
    gt[0:5, :] = 2
    pred[:] = 5
    pred[0:3, :] = 6
    pred[3:6, 0:4] = 7
    pred[3:6, 4:8] = 8
    pred[7:10, 0:4] = 9
    gt_segments = [segment(1, ROAD), segment(2, CAR, iscrowd=1)]
    pred_segments = [
        segment(5, ROAD),
        segment(6, CAR),
        segment(7, CAR),
        segment(8, DOG),
        segment(9, CAR),
    ]
    return PanopticImage(0, gt, gt_segments, pred, pred_segments)


def crowd_on_category_case():
    """Predictions mostly on a crowd of dogs: a dog is ignored, a car (18/24 px) is a FP."""
    gt, pred = blank(), blank()
    gt[:] = 1
    gt[0:5, 0:8] = 2
    pred[:] = 3
    pred[0:2, 0:8] = 4
    pred[2:6, 0:6] = 5
    gt_segments = [segment(1, SKY), segment(2, DOG, iscrowd=1)]
    pred_segments = [segment(3, SKY), segment(4, DOG), segment(5, CAR)]
    return PanopticImage(0, gt, gt_segments, pred, pred_segments)


def two_crowds_case():
    """Two crowd segments of one category: the reference only looks at the last one listed, so a
    prediction on the first is a FP."""
    gt, pred = blank(), blank()
    gt[:] = 1
    gt[0:4, 0:4] = 2
    gt[6:10, 6:10] = 3
    pred[:] = 4
    pred[0:4, 0:4] = 5
    gt_segments = [segment(1, GRASS), segment(2, BIKE, 1), segment(3, BIKE, 1)]
    pred_segments = [segment(4, GRASS), segment(5, BIKE)]
    return PanopticImage(0, gt, gt_segments, pred, pred_segments)


def wrong_category_case():
    """A perfect mask of the wrong category: a FP of the one, a FN of the other."""
    gt, pred = blank(), blank()
    gt[:, :6] = 1
    pred[:, :6] = 1
    return PanopticImage(0, gt, [segment(1, WALL)], pred, [segment(1, ROAD)])


def empty_cases():
    """An image with no GT segment (all void) and predictions; one with GT and no prediction."""
    gt, pred = blank(), blank()
    pred[:5] = 4
    first = PanopticImage(0, gt, [], pred, [segment(4, SKY)])
    gt2 = blank()
    gt2[:, 3:] = 9
    second = PanopticImage(1, gt2, [segment(9, PERSON)], blank(), [])
    return [first, second]


RULE_CASES = {
    "iou_threshold": iou_cases(),
    "void_in_union": [void_case()],
    "void_false_positive": void_fp_cases(),
    "crowd": [crowd_case()],
    "crowd_of_other_category": [crowd_on_category_case()],
    "two_crowds": [two_crowds_case()],
    "wrong_category": [wrong_category_case()],
    "empty_images": empty_cases(),
}


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_matches_reference(name, reference, tmp_path):
    images = RULE_CASES[name]
    expected = reference_pq(str(tmp_path), images, implementation=reference)
    assert_matches_reference(our_statistics(images), expected)


def test_iou_must_exceed_one_half():
    statistics = [our_statistics([image]) for image in iou_cases()]
    assert counts(statistics[0], CAR) == (1, 0, 0, pytest.approx(0.6))
    assert counts(statistics[1], CAR) == (0, 1, 1, 0.0)  # IoU exactly 0.5
    assert counts(statistics[2], CAR) == (0, 1, 1, 0.0)


def test_union_leaves_out_void():
    assert counts(our_statistics([void_case()]), PERSON) == (1, 0, 0, pytest.approx(0.6))


def test_prediction_mostly_on_void_is_not_a_false_positive():
    more_than_half, half = (our_statistics([image]) for image in void_fp_cases())
    assert counts(more_than_half, DOG)[:3] == (0, 0, 0)
    assert counts(half, DOG)[:3] == (0, 1, 0)


def test_crowd_is_never_matched_nor_missed():
    statistics = our_statistics([crowd_case()])
    assert counts(statistics, CAR)[:3] == (0, 1, 0)
    assert counts(statistics, DOG)[:3] == (0, 1, 0)
    assert counts(statistics, ROAD)[:3] == (1, 0, 0)


def test_crowd_only_excuses_predictions_of_its_category():
    statistics = our_statistics([crowd_on_category_case()])
    assert counts(statistics, DOG)[:3] == (0, 0, 0)
    assert counts(statistics, CAR)[:3] == (0, 1, 0)


def test_only_the_last_crowd_of_a_category_excuses_predictions():
    assert counts(our_statistics([two_crowds_case()]), BIKE)[:3] == (0, 1, 0)


def test_categories_without_segments_are_left_out_of_the_means():
    statistics = our_statistics([wrong_category_case()])
    summary = pq_summary(statistics, ISTHING)
    assert summary["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert summary["Things"]["n"] == 0 and np.isnan(summary["Things"]["pq"])
    per_category = pq_per_category(statistics)
    assert per_category["counted"].tolist() == [False] * 4 + [True, False, False, True]
    assert np.isnan(per_category["pq"][PERSON]) and per_category["pq"][ROAD] == 0.0


@pytest.mark.parametrize("reference", ["panopticapi", "cityscapesscripts"])
def test_all_rules_over_several_images_match_the_reference_process_pool(reference, tmp_path):
    images = [image for case in RULE_CASES.values() for image in case]
    images = [
        PanopticImage(k, i.gt_ids, i.gt_segments, i.pred_ids, i.pred_segments)
        for k, i in enumerate(images)
    ]
    expected = reference_pq(str(tmp_path), images, multi_core=True, implementation=reference)
    assert_matches_reference(our_statistics(images), expected)
    assert expected["All"]["n"] == NUM_CATEGORIES  # every category is exercised


# --- segment id lookup ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        [3, 1, 65534],  # below 2^16: direct table
        [0x123456, 0x00FF01, 0xABCDEF],  # 24-bit: 16-bit slots
        [0x010000, 5],  # no 16-bit slot choice separates them from void: binary search
    ],
)
def test_segment_index_map_finds_every_id(ids):
    rng = np.random.default_rng(0)
    values = np.array([0, *ids, 7777777, -3, MAX_SEGMENT_ID])  # void, the ids, unknown ones
    picks = rng.integers(0, len(values), size=(9, 11))
    id_map = torch.as_tensor(values[picks], dtype=torch.int32)
    index = segment_index_map(id_map, torch.tensor(ids))
    expected = np.array([0, *range(1, len(ids) + 1), len(ids) + 1, len(ids) + 1, len(ids) + 1])
    assert index.dtype == torch.int32
    assert index.numpy().tolist() == expected[picks].tolist()


# --- the CPU route (one lookup table of all 24-bit ids) against the general one -------------


def rgba(ids: np.ndarray, alpha: int = 255) -> np.ndarray:
    """A COCO-panoptic PNG's pixels as the evaluator reads them (RGBA)."""
    pixels = np.empty(ids.shape + (4,), dtype=np.uint8)
    pixels[..., :3] = id2rgb(ids)
    pixels[..., 3] = alpha
    return pixels


def png(ids: np.ndarray, alpha: bool = False):
    """A COCO-panoptic PNG of an id map (every row filter type), read as the evaluator reads it."""
    pixels = id2rgb(ids)
    if alpha:
        pixels = np.dstack([pixels, np.full(ids.shape, 7, np.uint8)])
    return read_filtered_png(encode_png(pixels), "gt.png")


def each_route_statistics(image: PanopticImage, gt_map, pred_map, pred_segments, monkeypatch):
    """(statistics through the CPU route, through the general route) of one image."""
    gt = segments_from_info(image.gt_segments, NUM_THINGS, NUM_STUFF, "gt", PanopticDataError)
    pred = segments_from_info(pred_segments, NUM_THINGS, NUM_STUFF, "pred")
    args = (gt, pred_map, pred, NUM_CATEGORIES, "image")
    fast = image_pq_statistics(gt_map, *args)
    with monkeypatch.context() as patch:
        patch.setattr(counting, "cpu_joint_histogram", lambda *_: None)
        general = image_pq_statistics(torch.as_tensor(image.gt_ids, dtype=torch.int32), *args)
    return fast, general


def renumbered(image: PanopticImage, rng: np.random.Generator, kind: str):
    """The prediction with ids 1..K ("small"), 40000.. ("large") or random 24-bit ones."""
    old = [s["id"] for s in image.pred_segments]
    new = {
        "small": np.arange(1, len(old) + 1),
        "large": np.arange(40000, 40000 + len(old)),
        "random": rng.choice(np.arange(1, MAX_SEGMENT_ID + 1), len(old), replace=False),
    }[kind]
    lookup = np.zeros(int(image.pred_ids.max()) + 1, dtype=np.int64)
    lookup[old] = new
    segments = [dict(s, id=int(i)) for s, i in zip(image.pred_segments, new)]
    return lookup[image.pred_ids], segments


@pytest.mark.parametrize("size", [(24, 32), (64, 96)])
def test_cpu_route_gives_the_general_route_statistics(size, monkeypatch):
    rng = np.random.default_rng(11)
    for image_id in range(24):
        image = random_image(rng, image_id, *size)
        kind = ("small", "large", "random")[image_id % 3]
        pred_ids, pred_segments = renumbered(image, rng, kind)
        small_or_int64 = torch.int16 if pred_ids.max() < 1 << 15 else torch.int64
        for gt_map, pred_map in [
            (torch.as_tensor(image.gt_ids, dtype=torch.int32), torch.as_tensor(pred_ids)),
            (rgba(image.gt_ids), torch.as_tensor(pred_ids, dtype=torch.int32)),
            (rgba(image.gt_ids, alpha=7), torch.as_tensor(pred_ids, dtype=small_or_int64)),
            (png(image.gt_ids), torch.as_tensor(pred_ids, dtype=torch.int32)),
            (png(image.gt_ids, alpha=True), torch.as_tensor(pred_ids, dtype=small_or_int64)),
        ]:
            fast, general = each_route_statistics(
                image, gt_map, pred_map, pred_segments, monkeypatch
            )
            for ours, theirs in zip(vars(fast).values(), vars(general).values()):
                assert np.array_equal(ours, theirs)


def test_cpu_route_falls_back_for_histograms_over_max_bins(monkeypatch):
    """(300 + 2) GT rows x (300 + 2) prediction columns: counted on the CPU route, and by the
    general route when the CPU route's histogram may not be that large."""
    index = np.arange(600).reshape(20, 30) // 2  # 300 segments of 2 pixels
    gt_ids, pred_ids = index * 1000 + 7, index + 1
    categories = [k % NUM_CATEGORIES for k in range(300)]
    image = PanopticImage(
        0,
        gt_ids,
        [segment(k * 1000 + 7, c) for k, c in enumerate(categories)],
        pred_ids,
        [segment(k + 1, c) for k, c in enumerate(categories)],
    )
    gt = segments_from_info(image.gt_segments, NUM_THINGS, NUM_STUFF, "gt", PanopticDataError)
    pred = segments_from_info(image.pred_segments, NUM_THINGS, NUM_STUFF, "pred")
    pred_map = torch.as_tensor(pred_ids)
    for max_bins, fits in ((counting.MAX_BINS, True), (302 * 302 - 1, False)):
        monkeypatch.setattr(counting, "MAX_BINS", max_bins)
        histogram = counting.cpu_joint_histogram(rgba(gt_ids), gt.ids, pred_map, pred.ids)
        assert (histogram is not None) == fits
        for gt_map in (rgba(gt_ids), png(gt_ids)):
            fast, general = each_route_statistics(
                image, gt_map, pred_map, image.pred_segments, monkeypatch
            )
            assert int(fast.tp.sum()) == 300
            for ours, theirs in zip(vars(fast).values(), vars(general).values()):
                assert np.array_equal(ours, theirs)


def test_png_route_counts_more_segments_than_16_bit_indices_hold(monkeypatch):
    """65536 GT segments: with void and unlisted ids, 65538 histogram rows, counted on the CPU
    route as on the general one."""
    gt_ids = np.arange(1, 65537).reshape(256, 256)
    pred_ids = np.ones_like(gt_ids)
    pred_ids[:, 128:] = 2
    image = PanopticImage(
        0,
        gt_ids,
        [segment(k, k % NUM_CATEGORIES) for k in range(1, 65537)],
        pred_ids,
        [segment(1, PERSON), segment(2, CAR)],
    )
    gt = segments_from_info(image.gt_segments, NUM_THINGS, NUM_STUFF, "gt", PanopticDataError)
    pred = segments_from_info(image.pred_segments, NUM_THINGS, NUM_STUFF, "pred")
    pred_map = torch.as_tensor(pred_ids)
    histogram = counting.cpu_joint_histogram(png(gt_ids), gt.ids, pred_map, pred.ids)
    assert histogram.shape == (65538, 4) and histogram[1:-1, 1:-1].sum() == gt_ids.size
    fast, general = each_route_statistics(
        image, png(gt_ids), pred_map, image.pred_segments, monkeypatch
    )
    assert int(fast.fn.sum()) == 65536
    for ours, theirs in zip(vars(fast).values(), vars(general).values()):
        assert np.array_equal(ours, theirs)


def test_cpu_route_errors_name_the_ids():
    image = simple_image()
    image.gt_ids[0, 0] = 12345678
    gt = segments_from_info(image.gt_segments, NUM_THINGS, NUM_STUFF, "gt", PanopticDataError)
    pred = segments_from_info(image.pred_segments, NUM_THINGS, NUM_STUFF, "pred")
    for gt_map in (rgba(image.gt_ids), png(image.gt_ids)):
        with pytest.raises(PanopticDataError, match=r"ground truth id map.*\[12345678\]"):
            image_pq_statistics(gt_map, gt, torch.as_tensor(image.pred_ids), pred, 8, "im")
    # Unlisted predicted ids: between listed ones, and outside the 24 bits of the id tables.
    pred = segments_from_info([segment(4, ROAD), segment(2, SKY)], NUM_THINGS, NUM_STUFF, "p")
    for unlisted in (3, -7, 1 << 24, 1 << 40):
        pred_ids = simple_image().pred_ids
        pred_ids[0, 0] = unlisted
        pred_ids[1, 1] = 2
        with pytest.raises(
            PanopticPredictionError, match=rf"not in segments_info: \[{unlisted}\]; .*\[\]"
        ):
            image_pq_statistics(
                rgba(simple_image().gt_ids), gt, torch.as_tensor(pred_ids), pred, 8, "image 5"
            )


# --- bad inputs ----------------------------------------------------------------------------


def statistics_of(image: PanopticImage):
    gt = segments_from_info(
        image.gt_segments, NUM_THINGS, NUM_STUFF, "image 5: gt", PanopticDataError
    )
    pred = segments_from_info(image.pred_segments, NUM_THINGS, NUM_STUFF, "image 5: pred")
    return image_pq_statistics(
        torch.as_tensor(image.gt_ids, dtype=torch.int32),
        gt,
        torch.as_tensor(image.pred_ids),
        pred,
        NUM_CATEGORIES,
        "image 5",
    )


def simple_image(pred_segments=None, pred_ids=None):
    gt = blank()
    gt[:, :6] = 1
    pred = blank() if pred_ids is None else pred_ids
    if pred_ids is None:
        pred[:, 2:8] = 4
    segments = [segment(4, ROAD)] if pred_segments is None else pred_segments
    return PanopticImage(5, gt, [segment(1, ROAD)], pred, segments)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"id": 4, "category_id": NUM_THINGS, "isthing": True}, "segment(s) ['4: thing 4']"),
        ({"id": 4, "category_id": -1, "isthing": True}, "['4: thing -1']"),
        ({"id": 4, "category_id": 0, "isthing": False}, "['4: stuff 0']"),
        ({"id": 4, "category_id": NUM_STUFF + 1, "isthing": False}, "['4: stuff 5']"),
        ({"id": 4, "category_id": 1}, "lacks 'isthing'"),
        ({"id": 4.5, "category_id": 1, "isthing": False}, "non-integer values (float64)"),
    ],
)
def test_unknown_category_names_image_and_segment(bad, message):
    with pytest.raises(PanopticPredictionError, match=re.escape(message)) as error:
        statistics_of(simple_image([bad]))
    assert "image 5: pred" in str(error.value)


def test_segment_id_errors_name_the_ids():
    with pytest.raises(PanopticPredictionError, match=r"image 5: pred.*\[4\] repeat"):
        statistics_of(simple_image([segment(4, ROAD), segment(4, SKY)]))
    with pytest.raises(PanopticPredictionError, match=r"segment id\(s\) \[0\] out of range"):
        statistics_of(simple_image([segment(0, ROAD)]))
    with pytest.raises(PanopticPredictionError, match=r"\[16777216\] out of range"):
        statistics_of(simple_image([segment(MAX_SEGMENT_ID + 1, ROAD)]))


def test_id_map_and_segments_info_must_agree():
    unlisted = blank()
    unlisted[:, 2:8] = 4
    unlisted[0, 0] = 99
    with pytest.raises(
        PanopticPredictionError,
        match=r"image 5: the prediction id map.*not in segments_info: \[99\]; .*not in the map: \[\]",
    ):
        statistics_of(simple_image(pred_ids=unlisted))
    with pytest.raises(PanopticPredictionError, match=r"not in the map: \[8\]"):
        statistics_of(simple_image([segment(4, ROAD), segment(8, SKY)]))
    image = simple_image()
    image.gt_ids[0, 0] = 12345678
    with pytest.raises(PanopticDataError, match=r"ground truth id map.*\[12345678\]"):
        statistics_of(image)


def test_prediction_size_and_dtype_are_checked():
    with pytest.raises(PanopticPredictionError, match=r"image 5: the prediction is \(10, 11\)"):
        statistics_of(simple_image(pred_ids=blank(10, 11)))
    gt = segments_from_info([segment(1, ROAD)], NUM_THINGS, NUM_STUFF, "gt")
    with pytest.raises(PanopticPredictionError, match="dtype torch.float32"):
        image_pq_statistics(
            torch.ones(2, 2, dtype=torch.int32), gt, torch.ones(2, 2), gt, NUM_CATEGORIES, "im"
        )


def test_image_without_any_segment_has_no_statistics():
    image = PanopticImage(0, blank(), [], blank(), [])
    statistics = statistics_of(image)
    assert all(int(x.sum()) == 0 for x in (statistics.tp, statistics.fp, statistics.fn))


# --- random maps ---------------------------------------------------------------------------


@st.composite
def panoptic_images(draw):
    """A small random image: GT ids from a pool (small or 24-bit), crowd things, void; the
    prediction copies part of the GT (same categories or not) and adds its own ids."""
    height, width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    big = draw(st.booleans())
    id_values = st.integers(1, MAX_SEGMENT_ID) if big else st.integers(1, 40)
    gt_pool = draw(st.lists(id_values, min_size=1, max_size=5, unique=True))
    gt_ids = draw(hnp.arrays(np.int64, (height, width), elements=st.sampled_from([0] + gt_pool)))
    gt_segments = []
    for seg_id in np.unique(gt_ids[gt_ids > 0]).tolist():
        index = draw(st.integers(0, NUM_CATEGORIES - 1))
        crowd = int(index < NUM_THINGS and draw(st.booleans()))
        gt_segments.append(segment(seg_id, index, crowd))
    own = draw(hnp.arrays(np.int64, (height, width), elements=st.sampled_from([0, 1001, 1002])))
    keep = draw(hnp.arrays(np.bool_, (height, width)))
    pred_ids = np.where(keep, gt_ids, own)
    category_of = {s["id"]: s for s in gt_segments}  # the GT segment a copied id comes from
    pred_segments = []
    for seg_id in np.unique(pred_ids[pred_ids > 0]).tolist():
        if seg_id in category_of and draw(st.booleans()):
            index = segment_index(category_of[seg_id])
        else:
            index = draw(st.integers(0, NUM_CATEGORIES - 1))
        pred_segments.append(segment(seg_id, index))
    return PanopticImage(0, gt_ids, gt_segments, pred_ids, pred_segments)


@settings(max_examples=150, deadline=None)
@given(image=panoptic_images())
def test_random_maps_match_reference_and_stay_consistent(image, tmp_path_factory):
    statistics = our_statistics([image])
    non_crowd_gt = np.bincount(
        [segment_index(s) for s in image.gt_segments if not s["iscrowd"]], minlength=NUM_CATEGORIES
    )
    pred_per_category = np.bincount(
        [segment_index(s) for s in image.pred_segments], minlength=NUM_CATEGORIES
    )
    tp, fp, fn = statistics.tp, statistics.fp, statistics.fn
    assert (tp + fn == non_crowd_gt).all()
    assert (tp + fp <= pred_per_category).all()
    iou = statistics.iou_sum
    # each IoU is at most 1: the sum of tp of them exceeds tp by float64 rounding at most
    bound = summation_bound(tp, tp, torch.float64)
    assert ((iou > 0.5 * tp) | (tp == 0)).all() and (iou <= tp + bound).all()
    per_category = pq_per_category(statistics)
    for metric in ("pq", "sq", "rq"):
        values = per_category[metric][per_category["counted"]]
        assert ((values >= 0) & (values <= 1)).all()
    assert_matches_reference(statistics, reference_pq(str(tmp_path_factory.mktemp("ref")), [image]))


def segment_index(seg):
    return seg["category_id"] if seg["isthing"] else NUM_THINGS + seg["category_id"] - 1


@pytest.mark.parametrize("reference", REFERENCES)
def test_many_random_images_match_reference(reference, tmp_path):
    rng = np.random.default_rng(1)
    images = [random_image(rng, image_id) for image_id in range(40)]
    expected = reference_pq(str(tmp_path), images, implementation=reference)
    assert_matches_reference(our_statistics(images), expected)
