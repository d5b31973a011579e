"""Export of predictions: COCO panoptic and Cityscapes files that the reference evaluation reads
back to the evaluator's numbers, written atomically."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_eval_cases import (
    CATEGORIES,
    model_input,
    model_output,
    random_image,
    reference_pq_of_files,
    register_case_dataset,
)
from panoptic_fpn_ext.data import PanopticDataError, rgb2id
from panoptic_fpn_ext.evaluation import PanopticQualityEvaluator, export_paths
from panoptic_fpn_ext.evaluation.export import write_id_map_png, write_json
from test_panoptic_evaluator import assert_results_match, run


def case(tmp_path, count=6):
    rng = np.random.default_rng(11)
    images = [random_image(rng, image_id) for image_id in range(count)]
    name = f"test_export_{tmp_path.name}_val"
    register_case_dataset(name, str(tmp_path), images)
    return name, images


def test_exported_files_evaluate_to_the_evaluators_results(tmp_path):
    name, images = case(tmp_path)
    out = tmp_path / "out"
    evaluator = PanopticQualityEvaluator(name, str(out), export_formats=["coco", "cityscapes"])
    results = run(evaluator, images, str(tmp_path))["panoptic_seg"]
    coco, cityscapes = export_paths("coco", str(out), name), export_paths(
        "cityscapes", str(out), name
    )
    assert coco == {
        "json": str(out / "panoptic_predictions.json"),
        "png_dir": str(out / "panoptic_predictions"),
    }
    assert cityscapes["json"] == str(out / "cityscapes_panoptic_val.json")
    for paths in (coco, cityscapes):
        expected = reference_pq_of_files(
            str(tmp_path / "gt.json"), str(tmp_path / "gt"), paths["json"], paths["png_dir"]
        )
        assert_results_match(results, expected)
    assert sorted(os.listdir(coco["png_dir"])) == sorted(f"{i.image_id}.png" for i in images)
    assert sorted(os.listdir(cityscapes["png_dir"])) == sorted(
        f"{i.image_id}_panoptic.png" for i in images
    )
    with open(coco["json"]) as f:
        data = json.load(f)
    assert data["categories"] == [dict(c) for c in CATEGORIES]  # things first, then stuff
    first = data["annotations"][0]
    png = np.asarray(Image.open(os.path.join(coco["png_dir"], first["file_name"])))
    assert (rgb2id(png) == images[first["image_id"]].pred_ids).all()
    dataset_ids = {c["id"] for c in CATEGORIES}
    assert all(
        s["category_id"] in dataset_ids for a in data["annotations"] for s in a["segments_info"]
    )
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
    assert leftovers == []


def test_images_of_one_name_in_two_folders_are_refused(tmp_path):
    name, images = case(tmp_path, 2)
    evaluator = PanopticQualityEvaluator(name, str(tmp_path / "out"), export_formats=["coco"])
    evaluator.reset()
    for image in images:
        image_input = model_input(image, str(tmp_path))
        image_input["file_name"] = os.path.join(str(tmp_path), f"folder{image.image_id}", "a.jpg")
        evaluator.process([image_input], [model_output(image)])
    with pytest.raises(PanopticDataError, match="image_id 0 and image_id 1 both map to a.png"):
        evaluator.evaluate()


def test_failed_writes_leave_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    png, js = tmp_path / "p.png", tmp_path / "p.json"
    write_id_map_png(str(png), np.full((3, 4), 70000))
    write_json(str(js), {"a": 1})
    old_png, old_json = png.read_bytes(), js.read_bytes()

    def broken_save(self, f, format=None):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_id_map_png(str(png), np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(TypeError):
        write_json(str(js), {"not serialisable": object()})
    assert png.read_bytes() == old_png and js.read_bytes() == old_json
    assert sorted(os.listdir(tmp_path)) == ["p.json", "p.png"]
    assert (rgb2id(np.asarray(Image.open(png))) == 70000).all()


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="Unknown export format 'png'.*'coco', 'cityscapes'"):
        export_paths("png", "/tmp", "d_val")
