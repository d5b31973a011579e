"""The synthetic "shapes" dataset: exact COCO panoptic format, deterministic, atomic."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from panoptic_fpn_ext.data import synthetic
from panoptic_fpn_ext.data.synthetic import (
    SHAPES_CATEGORIES,
    SHAPES_SPLIT_SIZES,
    ensure_shapes_dataset,
    generate_shapes_dataset,
)

SIZE = (64, 80)


def _decode_png(path):
    color = np.asarray(Image.open(path), dtype=np.int64)
    return color[:, :, 0] + 256 * color[:, :, 1] + 65536 * color[:, :, 2]


def _tree(root):
    """{relative path: bytes} of every file under root, hidden lock files excepted."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".lock"):
                path = os.path.join(directory, name)
                files[os.path.relpath(path, root)] = open(path, "rb").read()
    return files


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    paths = generate_shapes_dataset(root, "train", 40, SIZE, seed=3)
    with open(paths["panoptic_json"]) as f:
        return root, paths, json.load(f)


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_shapes_dataset(str(tmp_path / "a"), "val", 5, SIZE, seed=1)
    generate_shapes_dataset(str(tmp_path / "b"), "val", 5, SIZE, seed=1)
    generate_shapes_dataset(str(tmp_path / "c"), "val", 5, SIZE, seed=2)
    a, b, c = (_tree(str(tmp_path / name)) for name in "abc")
    assert len(a) == 5 + 5 + 2
    assert a == b
    assert a.keys() == c.keys()
    assert a["val/000001.jpg"] != c["val/000001.jpg"]


def test_layout_and_categories(shapes):
    root, paths, data = shapes
    assert sorted(os.listdir(paths["image_root"])) == [f"{i:06d}.jpg" for i in range(1, 41)]
    assert sorted(os.listdir(paths["panoptic_root"])) == [f"{i:06d}.png" for i in range(1, 41)]
    assert data["categories"] == SHAPES_CATEGORIES
    assert sum(c["isthing"] for c in data["categories"]) == 3
    assert [i["id"] for i in data["images"]] == [a["image_id"] for a in data["annotations"]]
    assert not [n for n in os.listdir(root) if n.startswith(".") and not n.endswith(".lock")]


def test_pngs_match_segments_info_exactly(shapes):
    _, paths, data = shapes
    category_ids = {c["id"] for c in data["categories"]}
    for image, ann in zip(data["images"], data["annotations"]):
        photo = Image.open(os.path.join(paths["image_root"], image["file_name"]))
        assert (photo.height, photo.width) == (image["height"], image["width"]) == SIZE
        ids = _decode_png(os.path.join(paths["panoptic_root"], ann["file_name"]))
        assert ids.shape == SIZE
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
        for segment in ann["segments_info"]:
            ys, xs = np.nonzero(ids == segment["id"])
            assert segment["area"] == len(ys)
            assert segment["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert segment["category_id"] in category_ids
            assert segment["iscrowd"] in (0, 1)


def _touches_border(bbox, height, width):
    x, y, w, h = bbox
    return x == 0 or y == 0 or x + w == width or y + h == height


def _things_touch(ids, thing_ids):
    """Whether two different thing segments are 4-neighbours somewhere (one occludes the other)."""
    is_thing = np.isin(ids, list(thing_ids))
    right = is_thing[:, :-1] & is_thing[:, 1:] & (ids[:, :-1] != ids[:, 1:])
    down = is_thing[:-1, :] & is_thing[1:, :] & (ids[:-1, :] != ids[1:, :])
    return right.any() or down.any()


def test_scenes_have_the_advertised_variety(shapes):
    _, paths, data = shapes
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    segments = [s for a in data["annotations"] for s in a["segments_info"]]
    assert {s["category_id"] for s in segments} == {c["id"] for c in data["categories"]}
    assert any(s["iscrowd"] for s in segments)
    thing_segments = [s for s in segments if s["category_id"] in things]
    areas = [s["area"] for s in thing_segments]
    assert min(areas) < 100 and max(areas) > 500  # varied sizes
    assert any(_touches_border(s["bbox"], *SIZE) for s in thing_segments)
    maps = [
        _decode_png(os.path.join(paths["panoptic_root"], a["file_name"]))
        for a in data["annotations"]
    ]
    assert any((ids == 0).any() for ids in maps)  # void pixels
    thing_ids = [
        {s["id"] for s in a["segments_info"] if s["category_id"] in things}
        for a in data["annotations"]
    ]
    assert any(_things_touch(ids, t) for ids, t in zip(maps, thing_ids))  # overlaps


def test_instances_json_matches_panoptic(shapes):
    _, paths, data = shapes
    coco = COCO(paths["instances_json"])
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    assert sorted(coco.getCatIds()) == sorted(things)
    for ann in data["annotations"]:
        ids = _decode_png(os.path.join(paths["panoptic_root"], ann["file_name"]))
        instances = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        expected = [s for s in ann["segments_info"] if s["category_id"] in things]
        assert len(instances) == len(expected)
        for instance, segment in zip(instances, expected):
            np.testing.assert_array_equal(coco.annToMask(instance), ids == segment["id"])
            assert instance["iscrowd"] == segment["iscrowd"]
            assert instance["category_id"] == segment["category_id"]
            assert instance["area"] == segment["area"]


def test_interrupted_generation_leaves_no_complete_split(tmp_path, monkeypatch):
    root = str(tmp_path)
    real_replace = os.replace

    def fail_on_panoptic_json(src, dst):
        if dst.endswith("panoptic_val.json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(synthetic.os, "replace", fail_on_panoptic_json)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(root, "val", 3, SIZE)
    monkeypatch.setattr(synthetic.os, "replace", real_replace)
    paths = synthetic.shapes_paths(root, "val")
    assert not os.path.exists(paths["panoptic_json"])  # incomplete: not taken as a dataset
    assert not [n for n in os.listdir(root) if n.startswith(".val-")]  # temp dir cleaned up
    ensure_shapes_dataset(root, "val", 3, SIZE)
    with open(paths["panoptic_json"]) as f:
        assert len(json.load(f)["images"]) == 3


def test_ensure_reuses_a_complete_split_and_replaces_a_different_one(tmp_path, monkeypatch):
    root = str(tmp_path)
    paths = ensure_shapes_dataset(root, "val", 3, SIZE)
    before = _tree(root)

    def must_not_write(*args):
        raise AssertionError("regenerated a complete split")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "_write_split", must_not_write)
        ensure_shapes_dataset(root, "val", 3, SIZE)
    assert _tree(root) == before
    ensure_shapes_dataset(root, "val", 4, SIZE)
    assert len(os.listdir(paths["image_root"])) == 4


def test_registered_shapes_dataset_is_generated_on_first_use(tmp_path):
    code = (
        "import panoptic_fpn_ext.data\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "records = DatasetCatalog.get('panoptic_fpn_ext_shapes_val')\n"
        "meta = MetadataCatalog.get('panoptic_fpn_ext_shapes_val')\n"
        "print(len(records), records[0]['file_name'], meta.panoptic_json, meta.json_file)\n"
    )
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    root = tmp_path / "panoptic_fpn_ext_shapes"
    assert out == [
        str(SHAPES_SPLIT_SIZES["val"]),
        str(root / "val" / "000001.jpg"),
        str(root / "annotations" / "panoptic_val.json"),
        str(root / "annotations" / "instances_val.json"),
    ]
    assert os.path.isfile(out[1]) and os.path.isfile(out[3])


def test_random_scene_is_drawn_as_the_dataset_draws_its_images(shapes):
    root, paths, data = shapes
    rng = np.random.default_rng([3, synthetic._split_key("train"), 1])  # image 1 of seed 3
    rgb, ids, segments = synthetic.random_shapes_scene(*SIZE, rng)
    assert rgb.shape == (*SIZE, 3) and rgb.dtype == np.uint8
    png = os.path.join(paths["panoptic_root"], data["annotations"][0]["file_name"])
    np.testing.assert_array_equal(ids, _decode_png(png))
    first = data["annotations"][0]["segments_info"]
    assert [s["id"] for s in segments] == [s["id"] for s in first]
