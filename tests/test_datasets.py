"""Loaders and registration: records and metadata are right, and every bad input is named."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.common import MapDataset
from PIL import Image

from panoptic_fpn_ext.data import (
    PanopticDataError,
    PanopticDatasetMapper,
    datasets_root,
    generate_shapes_dataset,
    id2rgb,
    load_cityscapes_panoptic_json,
    load_coco_panoptic_json,
    panoptic_metadata_from_categories,
    register_coco_panoptic_dataset,
    shapes_metadata,
)
from panoptic_fpn_ext.data.synthetic import shapes_paths

CITYSCAPES_THINGS = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
CITYSCAPES_STUFF = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
]


def _escaped(*parts):
    """A regex matching the parts, in order, anywhere in a message."""
    return ".*".join(re.escape(str(p)) for p in parts)


def _mapper():
    return PanopticDatasetMapper(True, augmentations=[], image_format="RGB")


# --- metadata -----------------------------------------------------------------------------


def test_metadata_from_categories_follows_the_separated_convention():
    categories = [
        {"id": 7, "name": "grass", "isthing": 0, "color": [0, 255, 0]},
        {"id": 3, "name": "dog", "isthing": 1, "color": [1, 2, 3]},
        {"id": 5, "name": "sky", "isthing": 0},
        {"id": 9, "name": "cat", "isthing": 1, "color": [4, 5, 6]},
    ]
    meta = panoptic_metadata_from_categories(categories)
    assert meta["thing_classes"] == ["dog", "cat"]
    assert meta["thing_colors"] == [[1, 2, 3], [4, 5, 6]]
    assert meta["thing_dataset_id_to_contiguous_id"] == {3: 0, 9: 1}
    assert meta["stuff_classes"] == ["things", "grass", "sky"]
    assert meta["stuff_dataset_id_to_contiguous_id"] == {0: 0, 7: 1, 5: 2}
    assert meta["stuff_colors"][1] == [0, 255, 0]
    assert len(meta["stuff_colors"]) == 3 and len(meta["stuff_colors"][2]) == 3  # sky: colormap


@pytest.mark.parametrize(
    "categories, message",
    [
        ([{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}], "twice"),
        ([{"id": 0, "name": "a", "isthing": 0}], "reserves for 'things'"),
        ([{"id": 1, "name": "a"}], "lacks ['isthing']"),
    ],
)
def test_bad_categories_are_named(categories, message):
    with pytest.raises(PanopticDataError, match=_escaped("my.json", message)):
        panoptic_metadata_from_categories(categories, "my.json")


def test_coco_metadata_is_detectron2s_separated_metadata():
    ours = MetadataCatalog.get("panoptic_fpn_ext_coco_2017_train")
    theirs = MetadataCatalog.get("coco_2017_train_panoptic_separated")
    for key in (
        "thing_classes",
        "thing_colors",
        "thing_dataset_id_to_contiguous_id",
        "stuff_classes",
        "stuff_colors",
        "stuff_dataset_id_to_contiguous_id",
    ):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert len(ours.thing_classes) == 80 and len(ours.stuff_classes) == 54


def test_builtin_datasets_are_registered_under_detectron2s_paths():
    root = datasets_root()
    expected = {
        "panoptic_fpn_ext_coco_2017_val": (
            "coco/val2017",
            "coco/panoptic_val2017",
            "coco/annotations/panoptic_val2017.json",
        ),
        "panoptic_fpn_ext_cityscapes_fine_panoptic_train": (
            "cityscapes/leftImg8bit/train",
            "cityscapes/gtFine/cityscapes_panoptic_train",
            "cityscapes/gtFine/cityscapes_panoptic_train.json",
        ),
        "panoptic_fpn_ext_shapes_train": (
            "panoptic_fpn_ext_shapes/train",
            "panoptic_fpn_ext_shapes/panoptic_train",
            "panoptic_fpn_ext_shapes/annotations/panoptic_train.json",
        ),
    }
    for name, (images, pngs, panoptic_json) in expected.items():
        meta = MetadataCatalog.get(name)
        assert name in DatasetCatalog.list()
        assert meta.image_root == os.path.join(root, images)
        assert meta.panoptic_root == os.path.join(root, pngs)
        assert meta.panoptic_json == os.path.join(root, panoptic_json)
        assert meta.evaluator_type == "panoptic_fpn_ext"
        assert meta.ignore_label == 255
    coco_val = MetadataCatalog.get("panoptic_fpn_ext_coco_2017_val")
    assert coco_val.json_file == os.path.join(root, "coco/annotations/instances_val2017.json")
    assert MetadataCatalog.get("panoptic_fpn_ext_shapes_val").thing_classes == [
        "circle",
        "square",
        "triangle",
    ]


def test_cityscapes_metadata_comes_from_cityscapesscripts():
    meta = MetadataCatalog.get("panoptic_fpn_ext_cityscapes_fine_panoptic_val")
    assert meta.thing_classes == CITYSCAPES_THINGS
    assert meta.stuff_classes == ["things"] + CITYSCAPES_STUFF
    assert meta.thing_colors == [list(name2label[n].color) for n in CITYSCAPES_THINGS]
    assert meta.stuff_colors[1:] == [list(name2label[n].color) for n in CITYSCAPES_STUFF]
    assert meta.thing_dataset_id_to_contiguous_id == {
        name2label[n].id: i for i, n in enumerate(CITYSCAPES_THINGS)
    }
    assert meta.stuff_dataset_id_to_contiguous_id == {
        0: 0,
        **{name2label[n].id: i + 1 for i, n in enumerate(CITYSCAPES_STUFF)},
    }
    assert meta.thing_dataset_id_to_contiguous_id[24] == 0  # person
    assert meta.stuff_dataset_id_to_contiguous_id[7] == 1  # road


# --- shapes in COCO panoptic format ----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pristine"))
    generate_shapes_dataset(root, "val", 6, (48, 40), seed=5)
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    """A fresh copy of a 6-image shapes split that a test may break: its paths."""
    root = str(tmp_path / "shapes")
    shutil.copytree(pristine, root)
    return shapes_paths(root, "val")


def _load(paths):
    return load_coco_panoptic_json(
        paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], shapes_metadata()
    )


def _edit_json(paths, edit):
    with open(paths["panoptic_json"]) as f:
        data = json.load(f)
    edit(data)
    with open(paths["panoptic_json"], "w") as f:
        json.dump(data, f)


def test_loader_records_match_the_json(dataset):
    with open(dataset["panoptic_json"]) as f:
        data = json.load(f)
    records = _load(dataset)
    meta = shapes_metadata()
    assert len(records) == 6
    for record, image, ann in zip(records, data["images"], data["annotations"]):
        assert record["file_name"] == os.path.join(dataset["image_root"], image["file_name"])
        assert record["pan_seg_file_name"] == os.path.join(
            dataset["panoptic_root"], ann["file_name"]
        )
        assert (record["image_id"], record["height"], record["width"]) == (image["id"], 48, 40)
        assert len(record["segments_info"]) == len(ann["segments_info"])
        for ours, theirs in zip(record["segments_info"], ann["segments_info"]):
            thing = theirs["category_id"] in meta["thing_dataset_id_to_contiguous_id"]
            id_map = meta[f"{'thing' if thing else 'stuff'}_dataset_id_to_contiguous_id"]
            assert ours["isthing"] == thing
            assert ours["category_id"] == id_map[theirs["category_id"]]
            for key in ("id", "iscrowd", "area", "bbox"):
                assert ours[key] == theirs[key]


# --- bad input: at load time ---------------------------------------------------------------


def _set_category(data, category_id):
    data["annotations"][3]["segments_info"][0]["category_id"] = category_id


def _repeat_segment(data):
    segments = data["annotations"][2]["segments_info"]
    segments.append(dict(segments[0]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: _set_category(d, 99), ["image_id 4", "category_id 99", "not a category"]),
        (lambda d: d["annotations"].pop(1), ["1 image(s) have no annotation", "[2]"]),
        (lambda d: d["annotations"][1].update(image_id=77), ["image_id 77", "not in 'images'"]),
        (_repeat_segment, ["image_id 3", "appears twice"]),
        (lambda d: d["annotations"][0]["segments_info"][0].update(id=0), ["0 is void"]),
        (lambda d: d["annotations"][0]["segments_info"][0].update(iscrowd=2), ["iscrowd"]),
        (lambda d: d["images"][0].pop("height"), ["lacks ['height']"]),
        (lambda d: d.pop("annotations"), ["no 'annotations' list"]),
    ],
)
def test_malformed_json_is_named_at_load_time(dataset, edit, message):
    _edit_json(dataset, edit)
    with pytest.raises(PanopticDataError, match=_escaped(dataset["panoptic_json"], *message)):
        _load(dataset)


def test_invalid_json_is_named(dataset):
    with open(dataset["panoptic_json"], "w") as f:
        f.write('{"images": [')
    with pytest.raises(PanopticDataError, match=_escaped(dataset["panoptic_json"], "not valid")):
        _load(dataset)


def test_missing_json_is_named(dataset):
    os.remove(dataset["panoptic_json"])
    with pytest.raises(FileNotFoundError, match=_escaped(dataset["panoptic_json"])):
        _load(dataset)


@pytest.mark.parametrize(
    "kind, folder, name",
    [("panoptic PNG", "panoptic_root", "000005.png"), ("image", "image_root", "000002.jpg")],
)
def test_missing_files_are_named_at_load_time(dataset, kind, folder, name):
    path = os.path.join(dataset[folder], name)
    os.remove(path)
    with pytest.raises(
        FileNotFoundError, match=_escaped(f"1 {kind}(s)", dataset["panoptic_json"], path)
    ):
        _load(dataset)


# --- bad input: when first read ------------------------------------------------------------


def _rewrite_png(record, change):
    ids = np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    Image.fromarray(id2rgb(change(ids))).save(record["pan_seg_file_name"])


def test_png_id_missing_from_json_is_named(dataset):
    record = _load(dataset)[2]

    def add_segment(ids):
        ids[0, 0] = 4242
        return ids

    _rewrite_png(record, add_segment)
    with pytest.raises(
        PanopticDataError,
        match=_escaped(record["pan_seg_file_name"], "in the PNG but not in the JSON: [4242]"),
    ):
        _mapper()(record)


def test_json_segment_missing_from_png_is_named(dataset):
    record = _load(dataset)[2]
    gone = record["segments_info"][-1]["id"]
    _rewrite_png(record, lambda ids: np.where(ids == gone, 0, ids))
    with pytest.raises(
        PanopticDataError,
        match=_escaped(record["pan_seg_file_name"], f"in the JSON but not in the PNG: [{gone}]"),
    ):
        _mapper()(record)


def test_image_size_differing_from_annotation_is_named(dataset):
    record = _load(dataset)[0]
    Image.open(record["file_name"]).resize((41, 48)).save(record["file_name"])
    with pytest.raises(ValueError, match=_escaped(record["file_name"], "(41, 48)", "(40, 48)")):
        _mapper()(record)


def test_png_size_differing_from_annotation_is_named(dataset):
    record = _load(dataset)[0]
    Image.open(record["pan_seg_file_name"]).crop((0, 0, 40, 47)).save(record["pan_seg_file_name"])
    with pytest.raises(
        PanopticDataError, match=_escaped(record["pan_seg_file_name"], "47x40", "48x40")
    ):
        _mapper()(record)


def test_png_removed_after_loading_is_named(dataset):
    record = _load(dataset)[1]
    os.remove(record["pan_seg_file_name"])
    with pytest.raises(FileNotFoundError, match=_escaped(record["pan_seg_file_name"])):
        _mapper()(record)


def test_corrupt_image_deep_in_a_dataset_is_named_through_a_data_loader(dataset):
    records = _load(dataset)
    bad = records[4]["file_name"]
    with open(bad, "r+b") as f:
        f.truncate(300)
    loader = torch.utils.data.DataLoader(
        MapDataset(records, _mapper()), batch_size=1, num_workers=1, collate_fn=lambda x: x
    )
    with pytest.raises(Exception, match=_escaped("Cannot read image", bad)):
        for _ in loader:
            pass


# --- custom registration -------------------------------------------------------------------


def test_register_custom_dataset(dataset):
    meta = register_coco_panoptic_dataset(
        "test_custom_shapes",
        dataset["image_root"],
        dataset["panoptic_root"],
        dataset["panoptic_json"],
        instances_json=dataset["instances_json"],
    )
    expected = shapes_metadata()
    for key, value in expected.items():
        assert getattr(meta, key) == value, key
    assert meta.json_file == dataset["instances_json"]
    assert meta.evaluator_type == "panoptic_fpn_ext"
    assert len(DatasetCatalog.get("test_custom_shapes")) == 6
    # Again with the same files: a no-op. With other files: refused.
    register_coco_panoptic_dataset(
        "test_custom_shapes",
        dataset["image_root"],
        dataset["panoptic_root"],
        dataset["panoptic_json"],
    )
    with pytest.raises(ValueError, match="already registered"):
        register_coco_panoptic_dataset("test_custom_shapes", "a", "b", "other.json")


# --- Cityscapes ---------------------------------------------------------------------------

CITYSCAPES_IMAGES = {
    "train": ["aachen_000000_000019", "bochum_000000_000313"],
    "val": ["frankfurt_000000_000294"],
}


def _cityscapes_instance_ids():
    """A 32x64 Cityscapes ``*_instanceIds.png`` map: label id, or label id * 1000 + instance."""
    m = np.full((32, 64), name2label["road"].id, np.uint16)
    m[:8] = name2label["sky"].id
    m[8:12] = name2label["static"].id  # ignored in evaluation: void in the panoptic PNG
    m[28:, :10] = name2label["sidewalk"].id
    m[12:20, 5:15] = 24000  # person 0
    m[12:20, 20:30] = 24001  # person 1
    m[24:30, 12:20] = 25000  # rider
    m[20:28, 40:60] = name2label["car"].id  # a crowd of cars (no instance number)
    m[14:20, 32:38] = 26000  # car 0
    return m


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """A fake Cityscapes tree, panoptic files made by cityscapesscripts' createPanopticImgs."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    for split, image_ids in CITYSCAPES_IMAGES.items():
        for image_id in image_ids:
            city = image_id.split("_")[0]
            for folder, suffix, array in (
                ("leftImg8bit", "leftImg8bit", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)),
                ("gtFine", "gtFine_instanceIds", _cityscapes_instance_ids()),
            ):
                os.makedirs(root / folder / split / city, exist_ok=True)
                Image.fromarray(array).save(
                    root / folder / split / city / f"{image_id}_{suffix}.png"
                )
    convert2panoptic(str(root / "gtFine"), str(root / "gtFine"), False, ["train", "val"])
    return root


def _load_cityscapes(root, split):
    return load_cityscapes_panoptic_json(
        str(root / "gtFine" / f"cityscapes_panoptic_{split}.json"),
        str(root / "leftImg8bit" / split),
        str(root / "gtFine" / f"cityscapes_panoptic_{split}"),
    )


def test_cityscapes_records(cityscapes):
    records = _load_cityscapes(cityscapes, "train")
    assert [r["image_id"] for r in records] == CITYSCAPES_IMAGES["train"]
    record = records[1]
    assert record["file_name"] == str(
        cityscapes / "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"
    )
    assert record["pan_seg_file_name"] == str(
        cityscapes / "gtFine/cityscapes_panoptic_train/bochum_000000_000313_gtFine_panoptic.png"
    )
    assert (record["height"], record["width"]) == (32, 64)
    segments = {
        s["id"]: (s["category_id"], s["isthing"], s["iscrowd"]) for s in record["segments_info"]
    }
    assert segments == {
        7: (1, False, 0),  # road
        8: (2, False, 0),  # sidewalk
        23: (11, False, 0),  # sky
        24000: (0, True, 0),
        24001: (0, True, 0),
        25000: (1, True, 0),
        26: (2, True, 1),  # car crowd
        26000: (2, True, 0),
    }
    assert len(_load_cityscapes(cityscapes, "val")) == 1


def test_cityscapes_targets(cityscapes):
    record = _load_cityscapes(cityscapes, "val")[0]
    out = _mapper()(record)
    instance_ids = _cityscapes_instance_ids()
    expected = np.full(instance_ids.shape, 255)
    for label_id, train_label in ((7, 1), (8, 2), (23, 11)):
        expected[instance_ids == label_id] = train_label
    expected[(instance_ids >= 1000) | (instance_ids == 26)] = 0
    np.testing.assert_array_equal(out["sem_seg"].numpy(), expected)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 0, 1, 2]
    for mask, segment_id in zip(instances.gt_masks.tensor.numpy(), (24000, 24001, 25000, 26000)):
        np.testing.assert_array_equal(mask, instance_ids == segment_id)
