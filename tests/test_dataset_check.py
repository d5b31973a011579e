"""The dataset check: every bad file found when a dataset is loaded, listed in one error that names
the dataset, with nothing written first; verdicts cached per file; train_net.py and the mapper's
and evaluators' hooks run it."""

import json
import os
import re
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from PIL import Image

import train_net
from panoptic_fpn_ext import add_panoptic_fpn_ext_config, validate_config
from panoptic_fpn_ext.data import (
    PanopticDataError,
    PanopticDatasetMapper,
    check_datasets,
    check_records,
    dataset_check,
    generate_shapes_dataset,
    id2rgb,
    load_shapes_dataset,
    register_coco_panoptic_dataset,
)
from panoptic_fpn_ext.data.check_cache import VerdictCache
from panoptic_fpn_ext.data.synthetic import shapes_paths
from panoptic_fpn_ext.model_zoo.lazy import checked_dataset_dicts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_start", "panoptic_fpn_ext_R_18_shapes.yaml")
SIZE = (48, 64)


@pytest.fixture
def shapes(tmp_path):
    """A fresh 8-image shapes split in COCO panoptic format: (root, records)."""
    root = str(tmp_path / "data")
    return root, load_shapes_dataset(root, "train", 8, SIZE, seed=3)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def break_records(records, json_path=None):
    """Bad data, one record each: a segment id in the JSON but not in its PNG, a PNG of the wrong
    size, a truncated JPEG, a PNG id not in the JSON, and without ``json_path`` (a dataset's
    loader already refuses a missing file) a missing PNG. Returns what the error must list."""
    records[0]["segments_info"].append({**records[0]["segments_info"][0], "id": 4242})
    png = np.asarray(Image.open(records[1]["pan_seg_file_name"]))
    Image.fromarray(np.pad(png, ((0, 2), (0, 0), (0, 0)))).save(records[1]["pan_seg_file_name"])
    truncate(records[2]["file_name"])
    if json_path is None:
        os.remove(records[3]["pan_seg_file_name"])
    ids = np.asarray(Image.open(records[4]["pan_seg_file_name"])).copy()
    ids[0, 0] = id2rgb(np.array(777))
    Image.fromarray(ids).save(records[4]["pan_seg_file_name"])
    if json_path is not None:  # the id added to the records, added in the JSON
        with open(json_path) as f:
            data = json.load(f)
        data["annotations"][0]["segments_info"].append(
            {**data["annotations"][0]["segments_info"][0], "id": 4242}
        )
        with open(json_path, "w") as f:
            json.dump(data, f)
    missing = [records[3]["pan_seg_file_name"]] if json_path is None else []
    return ["[4242]", records[1]["pan_seg_file_name"], records[2]["file_name"], "[777]", *missing]


def test_full_check_lists_every_bad_file_and_names_the_dataset(shapes, tmp_path):
    _, records = shapes
    expected = break_records(records)
    with pytest.raises(PanopticDataError) as error:
        check_records(records, "my_set", "full", str(tmp_path / "cache"))
    message = str(error.value)
    assert "Dataset 'my_set': 5 bad file(s) among 8 records" in message
    for text in expected:
        assert text in message, text
    assert "is 50x64 (HxW); its annotation says 48x64" in message
    assert "truncated" in message and "does not exist" in message


def test_headers_check_finds_sizes_and_missing_files_only(shapes, tmp_path):
    _, records = shapes
    break_records(records)
    with pytest.raises(PanopticDataError) as error:
        check_records(records, "my_set", "headers", None)
    message = str(error.value)
    assert "2 bad file(s)" in message
    assert records[1]["pan_seg_file_name"] in message
    assert records[3]["pan_seg_file_name"] in message
    check_records(records, "my_set", "off", None)  # checks nothing


def test_image_of_another_size_than_its_annotation(shapes):
    _, records = shapes
    Image.new("RGB", (SIZE[1], SIZE[0] + 1)).save(records[5]["file_name"], quality=90)
    with pytest.raises(PanopticDataError, match=r"is 49x64 \(HxW, after its EXIF rotation\)"):
        check_records(records, "my_set", "headers", None)


def test_exif_rotated_and_trailing_bytes_jpegs_pass(shapes):
    _, records = shapes
    height, width = SIZE
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: read as the annotation's height x width
    Image.new("RGB", (height, width)).save(records[0]["file_name"], exif=exif.tobytes())
    with open(records[1]["file_name"], "ab") as f:
        f.write(b"data after the end-of-image marker, as some cameras write it")
    check_records(records, "my_set", "full", None)


def test_long_lists_are_cut(shapes, monkeypatch):
    _, records = shapes
    for record in records:
        os.remove(record["file_name"])
    monkeypatch.setattr(dataset_check, "MAX_LISTED", 3)
    with pytest.raises(PanopticDataError, match=r"\.\.\. and 5 more") as error:
        check_records(records, "my_set", "headers", None)
    assert str(error.value).count("does not exist") == 3


def test_verdicts_are_cached_per_file(shapes, tmp_path, monkeypatch):
    _, records = shapes
    cache = str(tmp_path / "cache")
    check_records(records, "my_set", "full", cache)
    calls = []
    original = dataset_check._png_problem
    monkeypatch.setattr(dataset_check, "_png_problem", lambda *a: calls.append(a) or original(*a))
    check_records(records, "my_set", "full", cache)
    assert calls == []  # every verdict came from the cache
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(records[2]["pan_seg_file_name"])
    with pytest.raises(PanopticDataError, match=records[2]["pan_seg_file_name"]):
        check_records(records, "my_set", "full", cache)
    assert len(calls) == 1  # only the changed file was read again
    check_records(records[:2], "my_set", "headers", cache)  # another mode: its own verdicts
    assert len(calls) == 3


def test_unwritable_cache_folder_still_checks(shapes, tmp_path, caplog):
    _, records = shapes
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    check_records(records, "my_set", "full", str(blocked / "cache"))
    assert "cannot write its cache" in caplog.text
    truncate(records[0]["file_name"])
    with pytest.raises(PanopticDataError, match="truncated"):
        check_records(records, "my_set", "full", str(blocked / "cache"))


def test_two_writers_at_once_lose_no_verdict(tmp_path):
    first, second = VerdictCache("d", str(tmp_path)), VerdictCache("d", str(tmp_path))
    assert first.load() == second.load() == set()
    first.update(set(), {b"a" * 16})
    second.update(set(), {b"b" * 16})
    merged = VerdictCache("d", str(tmp_path))
    assert merged.load() == {b"a" * 16, b"b" * 16}
    merged.update(merged.load(), set())  # two files read: merged into one
    assert len(os.listdir(tmp_path)) == 1 and VerdictCache("d", str(tmp_path)).load() == {
        b"a" * 16,
        b"b" * 16,
    }


def _registered_broken_dataset(tmp_path):
    """A shapes split registered under a new name, with the bad-data cases: (name, names the
    error must list)."""
    root = str(tmp_path / "data")
    generate_shapes_dataset(root, "train", 8, SIZE, seed=3)
    paths = shapes_paths(root, "train")
    name = f"broken_{uuid.uuid4().hex[:8]}"
    register_coco_panoptic_dataset(
        name, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"]
    )
    records = load_shapes_dataset(root, "train", 8, SIZE, seed=3)
    return name, break_records(records, paths["panoptic_json"])


def test_train_net_refuses_bad_data_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name, expected = _registered_broken_dataset(tmp_path)
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    argv += ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"]
    with pytest.raises(PanopticDataError) as error:
        train_net.main(train_net.argument_parser().parse_args(argv))
    for text in [f"Dataset '{name}'", *expected]:
        assert text in str(error.value), text
    assert not out.exists()


def test_config_key_defaults_to_full_and_names_itself_when_wrong():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    assert cfg.PANOPTIC_FPN_EXT.DATA_CHECK == "full"
    cfg.PANOPTIC_FPN_EXT.DATA_CHECK = "fast"
    with pytest.raises(ValueError, match=re.escape("PANOPTIC_FPN_EXT.DATA_CHECK = 'fast'")):
        validate_config(cfg)


def test_check_datasets_follows_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name, _ = _registered_broken_dataset(tmp_path)
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.merge_from_file(CONFIG)  # the class counts of the shapes data
    cfg.PANOPTIC_FPN_EXT.DATA_CHECK = "off"
    check_datasets(cfg, [name])  # nothing checked
    cfg.PANOPTIC_FPN_EXT.DATA_CHECK = "full"
    with pytest.raises(PanopticDataError, match=f"Dataset '{name}'"):
        check_datasets(cfg, [name])
    cfg.DATASETS.TRAIN, cfg.INPUT.MASK_FORMAT = (name,), "bitmask"
    with pytest.raises(PanopticDataError, match=f"Dataset '{name}'"):  # a failure is not kept
        PanopticDatasetMapper(cfg, is_train=True)


def test_lazyconfig_loaders_check_the_files_unless_told_not_to(tmp_path, monkeypatch):
    """The LazyConfigs' ``checked_dataset_dicts`` (their loaders' dataset) runs the check."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name, expected = _registered_broken_dataset(tmp_path)
    counts = {"sem_seg_num_classes": 4, "roi_heads_num_classes": 3}  # the shapes data's
    with pytest.raises(PanopticDataError) as error:
        checked_dataset_dicts(name, **counts)
    for text in [f"Dataset '{name}'", *expected]:
        assert text in str(error.value), text
    assert len(checked_dataset_dicts(name, data_check="off", **counts)) == 8
