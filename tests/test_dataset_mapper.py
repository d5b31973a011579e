"""PanopticDatasetMapper: targets equal the panoptic PNG pixel for pixel, augmentations keep image,
instances and semantic map aligned, and random panoptic maps keep every invariant."""

import os
import re
import tempfile

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks
from hypothesis import HealthCheck, given, settings
from PIL import Image

from panoptic_fpn_ext import add_panoptic_fpn_ext_config
from panoptic_fpn_ext.data import cityscapes_panoptic_metadata
from panoptic_fpn_ext.data.dataset_mapper import _semantic_dtype
from panoptic_fpn_ext.data import (
    PanopticDatasetMapper,
    generate_shapes_dataset,
    id2rgb,
    load_shapes_dataset,
    semantic_from_panoptic,
    semantic_label,
)

IGNORE = 255
NUM_STUFF = 4
EXIF_ORIENTATION = 274


# --- references: the obviously-correct per-segment rules ------------------------------------


def reference_semantic(ids, segments_info, ignore=IGNORE):
    """Detectron2's prepare_panoptic_fpn.py rule: start all ignore; each segment's pixels get 0
    if it is a thing (crowd included), else its contiguous stuff id."""
    semantic = np.full(ids.shape, ignore, dtype=np.int64)
    for segment in segments_info:
        semantic[ids == segment["id"]] = 0 if segment["isthing"] else segment["category_id"]
    return semantic


def transformed_masks(ids, segments_info, transforms):
    """Each segment's pixels, transformed on their own as a binary uint8 map: {id: bool mask}."""
    return {
        s["id"]: transforms.apply_segmentation((ids == s["id"]).astype(np.uint8)).astype(bool)
        for s in segments_info
    }


def reference_targets(ids, segments_info, transforms):
    """(semantic int64 (H, W), sorted [(class, mask bytes)] of instances) after ``transforms``."""
    masks = transformed_masks(ids, segments_info, transforms)
    shape = transforms.apply_segmentation(np.zeros(ids.shape, np.uint8)).shape
    semantic = np.full(shape, IGNORE, dtype=np.int64)
    instances = []
    for segment in segments_info:
        mask = masks[segment["id"]]
        semantic[mask] = 0 if segment["isthing"] else segment["category_id"]
        if segment["isthing"] and not segment["iscrowd"] and mask.any():
            instances.append((segment["category_id"], mask.tobytes()))
    return semantic, sorted(instances)


def output_instances(out):
    instances = out["instances"]
    masks = instances.gt_masks.tensor.numpy()
    return sorted(zip(instances.gt_classes.tolist(), (m.tobytes() for m in masks)))


def assert_boxes_are_tight(out):
    instances = out["instances"]
    for mask, box in zip(instances.gt_masks.tensor.numpy(), instances.gt_boxes.tensor.tolist()):
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def assert_targets_are_those_of_full_size_masks(out, rng, count=48):
    """Mask R-CNN targets of random proposals (GT boxes, moved ones, integer ones) equal those of
    BitMasks holding the same masks at full size, and the boxes are BitMasks' boxes."""
    instances = out["instances"]
    full = BitMasks(instances.gt_masks.tensor)
    assert torch.equal(instances.gt_boxes.tensor, full.get_bounding_boxes().tensor)
    if len(instances) == 0:
        return
    index = torch.from_numpy(rng.integers(len(instances), size=count))
    boxes = instances.gt_boxes.tensor[index].clone()
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    boxes[count // 3 :] += (
        torch.from_numpy(rng.normal(0, 0.2, (count - count // 3, 4))).float() * size[count // 3 :]
    )
    boxes[2 * count // 3 :] = boxes[2 * count // 3 :].round()
    boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], 1)
    expected = full[index].crop_and_resize(boxes, 28)
    assert torch.equal(instances.gt_masks[index].crop_and_resize(boxes, 28), expected)


def write_record(directory, ids, segments_info, image=None):
    """Write an id map (and an image; random by default) as a panoptic record."""
    os.makedirs(directory, exist_ok=True)
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, ids.shape + (3,), dtype=np.uint8)
    record = {
        "file_name": os.path.join(directory, "image.png"),
        "pan_seg_file_name": os.path.join(directory, "panoptic.png"),
        "image_id": 1,
        "height": ids.shape[0],
        "width": ids.shape[1],
        "segments_info": segments_info,
    }
    Image.fromarray(image).save(record["file_name"])
    Image.fromarray(id2rgb(ids)).save(record["pan_seg_file_name"])
    return record


def read_ids(path):
    color = np.asarray(Image.open(path), dtype=np.int64)
    return color[..., 0] + 256 * color[..., 1] + 65536 * color[..., 2]


def mapper(augmentations=(), **kwargs):
    return PanopticDatasetMapper(
        True, augmentations=list(augmentations), image_format="RGB", **kwargs
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, "train", 30, (64, 48), seed=7)
    return load_shapes_dataset(root, "train", 30, (64, 48), seed=7)


# --- synthetic data → targets ---------------------------------------------------------------


def test_targets_match_the_png_pixel_for_pixel(shapes):
    crowd_seen = False
    for record in shapes:
        out = mapper()(record)
        ids = read_ids(record["pan_seg_file_name"])
        image = np.asarray(Image.open(record["file_name"]))
        np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(
            out["sem_seg"].numpy(), reference_semantic(ids, record["segments_info"])
        )
        things = [s for s in record["segments_info"] if s["isthing"] and not s["iscrowd"]]
        expected = sorted((s["category_id"], (ids == s["id"]).tobytes()) for s in things)
        assert output_instances(out) == expected
        assert_boxes_are_tight(out)
        crowd_seen |= any(s["iscrowd"] for s in record["segments_info"])
        assert out["sem_seg"].dtype == out["instances"].gt_classes.dtype == torch.int64
    assert crowd_seen  # crowd segments were present, and gave no instance


def test_semantic_from_panoptic_matches_the_reference(shapes):
    for record in shapes[:5]:
        ids = read_ids(record["pan_seg_file_name"])
        for ignore in (255, 200):
            np.testing.assert_array_equal(
                semantic_from_panoptic(record, ignore),
                reference_semantic(ids, record["segments_info"], ignore),
            )


def test_ignore_value_labels_void(shapes):
    record = next(r for r in shapes if (read_ids(r["pan_seg_file_name"]) == 0).any())
    out = mapper(ignore_value=200)(record)
    void = read_ids(record["pan_seg_file_name"]) == 0
    assert (out["sem_seg"].numpy()[void] == 200).all()
    assert 255 not in out["sem_seg"].unique().tolist()


# --- augmentations keep everything aligned --------------------------------------------------


PALETTE = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)


def _palette_record(record, directory):
    """The record with its image replaced by one color per segment (PNG, lossless)."""
    ids = read_ids(record["pan_seg_file_name"])
    index = np.unique(ids, return_inverse=True)[1].reshape(ids.shape)
    return write_record(directory, ids, record["segments_info"], PALETTE[index]), index


def _interior(index_map, radius=2):
    """bool (H, W): pixels whose (2 radius + 1)² neighbourhood is inside the map and holds a
    single index (there, a bilinearly resampled image has exactly the segment's color)."""
    padded = np.pad(index_map, radius, constant_values=-1)
    h, w = index_map.shape
    side = range(2 * radius + 1)
    windows = [padded[dy : dy + h, dx : dx + w] for dy in side for dx in side]
    return np.all([window == index_map for window in windows], axis=0)


@pytest.mark.parametrize(
    "transforms",
    [
        [T.HFlipTransform(48)],
        [T.CropTransform(5, 9, 30, 40)],
        [T.ResizeTransform(64, 48, 128, 96), T.CropTransform(20, 10, 60, 90), T.HFlipTransform(60)],
        [T.ResizeTransform(64, 48, 41, 31), T.HFlipTransform(31)],
    ],
    ids=["flip", "crop", "resize-crop-flip", "downscale-flip"],
)
def test_augmentations_keep_image_instances_and_semantic_aligned(shapes, tmp_path, transforms):
    transforms = T.TransformList(transforms)
    for k, source in enumerate(shapes[:8]):
        record, index = _palette_record(source, str(tmp_path / str(k)))
        ids = read_ids(record["pan_seg_file_name"])
        out = mapper(transforms.transforms)(record)
        semantic, instances = reference_targets(ids, record["segments_info"], transforms)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), semantic)
        assert output_instances(out) == instances
        assert_boxes_are_tight(out)
        # The image follows: each pixel has its segment's color (after resampling, only pixels
        # away from segment borders can be expected to).
        moved = transforms.apply_segmentation(index.astype(np.uint8)).astype(int)
        resampled = any(isinstance(t, T.ResizeTransform) for t in transforms.transforms)
        checked = _interior(moved) if resampled else np.ones(moved.shape, bool)
        assert checked.mean() > 0.2
        image = out["image"].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(image[checked], PALETTE[moved[checked]])


def test_more_than_256_segments_survive_resizing(tmp_path):
    ids = np.arange(1, 401).reshape(20, 20) * 1000
    segments = []
    for k, segment_id in enumerate(ids.ravel().tolist()):
        isthing = k % 3 > 0
        segments.append(
            {
                "id": segment_id,
                "isthing": isthing,
                "iscrowd": int(isthing and k % 7 == 0),
                "category_id": k % 3 if isthing else k % 4 + 1,
            }
        )
    record = write_record(str(tmp_path), ids, segments)
    transforms = T.TransformList([T.ResizeTransform(20, 20, 37, 29), T.HFlipTransform(29)])
    out = mapper(transforms.transforms)(record)
    semantic, instances = reference_targets(ids, segments, transforms)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), semantic)
    assert len(instances) > 200 and output_instances(out) == instances


def test_crop_that_removes_every_instance(tmp_path):
    ids = np.full((40, 60), 5, dtype=np.int64)  # stuff everywhere ...
    ids[5:20, 3:20] = 7  # ... and one thing, on the left
    segments = [
        {"id": 5, "isthing": False, "iscrowd": 0, "category_id": 2},
        {"id": 7, "isthing": True, "iscrowd": 0, "category_id": 1},
    ]
    record = write_record(str(tmp_path), ids, segments)
    out = mapper([T.CropTransform(30, 0, 30, 40)])(record)
    instances = out["instances"]
    assert len(instances) == 0 and instances.image_size == (40, 30)
    assert instances.gt_masks.tensor.shape == (0, 40, 30)
    assert instances.gt_boxes.tensor.shape == (0, 4) and instances.gt_classes.shape == (0,)
    assert (out["sem_seg"] == 2).all()


def test_stuff_segment_with_contiguous_id_zero_is_named(tmp_path):
    ids = np.full((4, 4), 9, dtype=np.int64)
    record = write_record(
        str(tmp_path), ids, [{"id": 9, "isthing": False, "iscrowd": 0, "category_id": 0}]
    )
    with pytest.raises(
        ValueError, match=re.escape(f"image_id 1 ({record['file_name']}): stuff segment 9")
    ):
        mapper()(record)


# --- from_config ---------------------------------------------------------------------------


def _cfg(**overrides):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def test_from_config_rejects_polygon_masks():
    with pytest.raises(ValueError, match=re.escape("INPUT.MASK_FORMAT = 'polygon'")):
        PanopticDatasetMapper(_cfg(**{"INPUT.MASK_FORMAT": "polygon"}), is_train=True)


def test_from_config_resizes_then_crops_then_flips():
    cfg = _cfg(
        **{
            "INPUT.CROP.ENABLED": True,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": (16, 24),
            "INPUT.FORMAT": "RGB",
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 254,
        }
    )
    train = PanopticDatasetMapper(cfg, is_train=True)
    kinds = [type(a) for a in train.augmentations.augs]
    assert kinds == [T.ResizeShortestEdge, T.RandomCrop, T.RandomFlip]
    assert (train.image_format, train.ignore_value) == ("RGB", 254)
    test = PanopticDatasetMapper(cfg, is_train=False)
    assert [type(a) for a in test.augmentations.augs] == [T.ResizeShortestEdge]


def test_random_crops_never_crash_and_stay_consistent(shapes):
    cfg = _cfg(
        **{
            "INPUT.MIN_SIZE_TRAIN": (48, 96),
            "INPUT.CROP.ENABLED": True,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": (12, 12),
        }
    )
    train = PanopticDatasetMapper(cfg, is_train=True)
    empty = 0
    for record in shapes:
        out = train(record)
        masks = out["instances"].gt_masks.tensor
        assert out["image"].shape[1:] == out["sem_seg"].shape == (12, 12) == masks.shape[1:]
        assert (out["sem_seg"][masks.any(dim=0)] == 0).all()
        assert (masks.sum(dim=0) <= 1).all()
        empty += len(out["instances"]) == 0
    assert empty > 0  # some crops held no instance at all


def test_test_time_reads_only_the_image(shapes, tmp_path):
    record = write_record(
        str(tmp_path), read_ids(shapes[0]["pan_seg_file_name"]), shapes[0]["segments_info"]
    )
    os.remove(record["pan_seg_file_name"])
    cfg = _cfg(**{"INPUT.MIN_SIZE_TEST": 96, "INPUT.MAX_SIZE_TEST": 1000})
    out = PanopticDatasetMapper(cfg, is_train=False)(record)
    assert out["image"].shape == (3, 128, 96)
    assert "instances" not in out and "sem_seg" not in out
    assert (out["height"], out["width"], out["image_id"]) == (64, 48, 1)


# --- EXIF orientation ------------------------------------------------------------------------


def _exif_record(directory, annotated_size):
    """A JPEG stored sideways with EXIF orientation 6; shown upright it is 20x30 with a red block
    where the panoptic PNG has a thing."""
    ids = np.full((20, 30), 1, dtype=np.int64)
    ids[2:10, 4:16] = 2
    shown = np.full((20, 30, 3), 40, np.uint8)
    shown[ids == 2] = (250, 10, 10)
    segments = [
        {"id": 1, "isthing": False, "iscrowd": 0, "category_id": 1},
        {"id": 2, "isthing": True, "iscrowd": 0, "category_id": 0},
    ]
    record = write_record(directory, ids, segments)
    record["file_name"] = os.path.join(directory, "sideways.jpg")
    record["height"], record["width"] = annotated_size
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(shown))).save(
        record["file_name"], quality=100, exif=exif
    )
    return record, ids


def test_exif_rotated_image_is_aligned_with_its_annotation(tmp_path):
    record, ids = _exif_record(str(tmp_path), (20, 30))
    out = mapper()(record)
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    mask = out["instances"].gt_masks.tensor[0].numpy()
    np.testing.assert_array_equal(mask, ids == 2)
    assert image[mask][:, 0].mean() > 230 and image[~mask][:, 0].mean() < 60


def test_exif_rotated_image_with_unrotated_annotation_is_named(tmp_path):
    record, _ = _exif_record(str(tmp_path), (30, 20))
    with pytest.raises(ValueError, match=re.escape(record["file_name"])):
        mapper()(record)


# --- properties of random panoptic maps -----------------------------------------------------


@st.composite
def panoptic_maps(draw):
    """A random id map (H, W up to 24) with up to 10 segments and void, and its segments_info."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    count = draw(st.integers(0, 10))
    labels = draw(hnp.arrays(np.int64, (height, width), elements=st.integers(0, count)))
    pool = draw(st.lists(st.integers(1, 256**3 - 1), min_size=count, max_size=count, unique=True))
    ids = np.array([0] + pool, dtype=np.int64)[labels]
    segments = []
    for k, segment_id in enumerate(pool, start=1):
        if not (labels == k).any():
            continue
        isthing = draw(st.booleans())
        segments.append(
            {
                "id": segment_id,
                "isthing": isthing,
                "iscrowd": int(isthing and draw(st.booleans())),
                "category_id": draw(st.integers(0, 2) if isthing else st.integers(1, NUM_STUFF)),
            }
        )
    return ids, segments


@st.composite
def geometric_transforms(draw, height, width):
    """A random chain of resize / crop / horizontal flip for an image of (height, width)."""
    transforms = []
    for kind in draw(st.lists(st.sampled_from(["resize", "crop", "flip"]), max_size=3)):
        if kind == "resize":
            new_h, new_w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
            transforms.append(T.ResizeTransform(height, width, new_h, new_w))
            height, width = new_h, new_w
        elif kind == "crop":
            y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
            h, w = draw(st.integers(1, height - y0)), draw(st.integers(1, width - x0))
            transforms.append(T.CropTransform(x0, y0, w, h))
            height, width = h, w
        else:
            transforms.append(T.HFlipTransform(width))
    return T.TransformList(transforms)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), panoptic=panoptic_maps())
def test_random_panoptic_maps_keep_the_invariants(data, panoptic):
    ids, segments = panoptic
    transforms = data.draw(geometric_transforms(*ids.shape))
    with tempfile.TemporaryDirectory() as directory:
        out = mapper(transforms.transforms)(write_record(directory, ids, segments))
    semantic = out["sem_seg"].numpy()
    masks = out["instances"].gt_masks.tensor.numpy()
    assert out["image"].shape[1:] == semantic.shape == masks.shape[1:]
    assert set(np.unique(semantic)) <= set(range(NUM_STUFF + 1)) | {IGNORE}
    reference_semantic_map, reference_instances = reference_targets(ids, segments, transforms)
    np.testing.assert_array_equal(semantic, reference_semantic_map)
    thing_pixels = np.zeros(semantic.shape, bool)
    for segment_id, mask in transformed_masks(ids, segments, transforms).items():
        if next(s for s in segments if s["id"] == segment_id)["isthing"]:
            thing_pixels |= mask
    assert (semantic[thing_pixels] == 0).all()
    # Every visible non-crowd thing segment is exactly one instance whose mask is its pixels.
    assert output_instances(out) == reference_instances
    assert_boxes_are_tight(out)
    assert_targets_are_those_of_full_size_masks(
        out, np.random.default_rng(data.draw(st.integers(0, 99)))
    )
    if not transforms.transforms:
        expected = sorted(
            (s["category_id"], (ids == s["id"]).tobytes())
            for s in segments
            if s["isthing"] and not s["iscrowd"]
        )
        assert output_instances(out) == expected


def coco_like_scene(rng, height, width):
    """A larger scene: stuff bands, then 10-40 blobs from 1 px to half the image painted over one
    another (touching, hiding, crossing the border), void rings, one crowd region."""
    y, x = np.mgrid[:height, :width]
    labels = (y * 3 // height) + 1  # three stuff bands, ids 1-3
    num_things = int(rng.integers(10, 41))
    for n in range(num_things):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        r = np.exp(rng.uniform(np.log(0.6), np.log(height / 2)))
        inside = ((y - cy) / r) ** 2 + ((x - cx) / (r * rng.uniform(0.5, 2))) ** 2
        labels[(inside < 1.4) & (inside >= 1) & (rng.uniform() < 0.3)] = 0  # void ring
        labels[inside < 1 + 0.2 * np.sin(x / 3.0)] = 10 + n
    ids, segments = np.zeros_like(labels), []
    pool = rng.choice(np.arange(1, 256**3), size=10 + num_things, replace=False)
    crowd = 10 + int(rng.integers(num_things))
    for label in np.unique(labels[labels > 0]):
        ids[labels == label] = pool[label]
        isthing = bool(label >= 10)
        category = int(rng.integers(0, 3)) if isthing else int(label)
        segments.append(
            {
                "id": int(pool[label]),
                "isthing": isthing,
                "iscrowd": int(label == crowd),
                "category_id": category,
            }
        )
    return ids, segments


@pytest.mark.parametrize("seed", range(4))
def test_coco_like_scenes_give_the_targets_of_full_size_masks(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ids, segments = coco_like_scene(rng, 96, 128)
    height, width = (150, 200) if seed % 2 else (70, 93)
    transforms = T.TransformList(
        [T.ResizeTransform(96, 128, height, width)]
        + ([T.HFlipTransform(width)] if seed < 2 else [])
        + ([T.CropTransform(5, 3, width - 20, height - 9)] if seed % 3 == 0 else [])
    )
    record = write_record(str(tmp_path), ids, segments)
    out = mapper(transforms.transforms, compact_sem_seg=True)(record)
    semantic, instances = reference_targets(ids, segments, transforms)
    assert out["sem_seg"].dtype == torch.uint8
    np.testing.assert_array_equal(out["sem_seg"].numpy(), semantic)
    assert output_instances(out) == instances and len(instances) >= 5
    assert_boxes_are_tight(out)
    assert_targets_are_those_of_full_size_masks(out, rng, count=128)


def test_from_config_makes_sem_seg_compact_for_panoptic_fpn_ext_only(shapes):
    outputs = {}
    for architecture in ("PanopticFPNExt", "PanopticFPN", "SemanticSegmentor"):
        cfg = _cfg(**{"MODEL.META_ARCHITECTURE": architecture, "INPUT.MIN_SIZE_TRAIN": (96,)})
        np.random.seed(0)
        outputs[architecture] = PanopticDatasetMapper(cfg, is_train=True)(shapes[0])["sem_seg"]
    assert outputs["PanopticFPNExt"].dtype == torch.uint8
    assert outputs["PanopticFPN"].dtype == outputs["SemanticSegmentor"].dtype == torch.int64
    assert torch.equal(outputs["PanopticFPNExt"].long(), outputs["PanopticFPN"])


def test_compact_sem_seg_dtype_holds_every_label():
    assert _semantic_dtype(np.array([0, 3, 255])) == np.uint8
    assert _semantic_dtype(np.array([0, 256])) == np.int16
    assert _semantic_dtype(np.array([2**15])) == np.int64


# --- the all-classes target of a semantic-only model ("Semantic FPN") -----------------------


def test_all_classes_target_follows_the_per_segment_rule(shapes):
    num_stuff = 3  # shapes: sky, ground, water
    for record in shapes[:5]:
        out = mapper(num_stuff_classes=num_stuff)(record)
        ids = read_ids(record["pan_seg_file_name"])
        expected = np.full(ids.shape, IGNORE, dtype=np.int64)
        for s in record["segments_info"]:
            label = num_stuff + s["category_id"] if s["isthing"] else s["category_id"] - 1
            expected[ids == s["id"]] = label
        np.testing.assert_array_equal(out["sem_seg"].numpy(), expected)
        assert set(np.unique(expected)) - {IGNORE} <= set(range(num_stuff + 3))


def test_all_classes_labels_are_cityscapes_train_ids():
    from cityscapesscripts.helpers.labels import labels

    meta = cityscapes_panoptic_metadata()
    num_stuff = len(meta["stuff_classes"]) - 1
    evaluated = [l for l in labels if not l.ignoreInEval]
    assert num_stuff == 11 and len(evaluated) == 19
    for label in evaluated:
        table = "thing" if label.hasInstances else "stuff"
        contiguous = meta[f"{table}_dataset_id_to_contiguous_id"][label.id]
        assert semantic_label(label.hasInstances, contiguous, num_stuff) == label.trainId
