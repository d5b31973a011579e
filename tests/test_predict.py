"""What only the predict tool does: config flags and errors, user datasets, the confidence
threshold, visualisations and batches. The contract it shares with the deployed runner (names,
skipped images, signals, reused folders, same maps) is in tests/test_inference_contract.py.
Runs as users run it: ``python -m panoptic_fpn_ext.tools.predict`` from the installed wheel
(``tests/installed.py``), in a subprocess whose working directory is outside the repository,
with the config given by name (the other checks call ``main`` in this process)."""

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from panoptic_fpn_ext.tools import predict
from test_inference_contract import check_consistent, read_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAME = "quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
CONFIG = os.path.join(ROOT, "configs", CONFIG_NAME)
# Small inputs and few detections keep a random-weights model fast on a CPU.
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "48",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


def _run(installed_plugin, cwd, *args, opts=()):
    command = ["--config-file", CONFIG_NAME, *args, "--opts", *TINY, *opts]
    return installed_plugin.run_module(
        "panoptic_fpn_ext.tools.predict", args=command, cwd=str(cwd), timeout=300
    )


def _write_images(folder, names, seed=0, size=(40, 56)):
    rng = np.random.default_rng(seed)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _main(tmp_path, images, out, *flags, opts=()):
    """``predict.main`` in this process (no interpreter start-up: for checks of many runs)."""
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / images), "--output", str(out)]
    return predict.main(argv + list(flags) + ["--opts", *TINY, *opts])


def test_opts_reach_the_config_and_errors_name_the_key(tmp_path, installed_plugin):
    _write_images(tmp_path / "in", ["a.jpg"])
    missing = str(tmp_path / "no_model.pth")
    result = _run(installed_plugin, tmp_path, "--input", "in", "--output", "out",
                  opts=["MODEL.WEIGHTS", missing])
    assert result.returncode != 0
    assert f"MODEL.WEIGHTS = {missing!r}" in result.stderr and "no such file" in result.stderr
    assert not (tmp_path / "out").exists()
    argv = ["--config-file", CONFIG, "--output", str(tmp_path / "o"), "--input", str(tmp_path)]
    with pytest.raises(ValueError, match="config key SOLVER.MAX_ITR does not exist"):
        predict.main(argv + ["--opts", "SOLVER.MAX_ITR", "1"])
    with pytest.raises(FileNotFoundError, match=r"--input MODEL.WEIGHTS: .*after --opts"):
        predict.main(argv + ["MODEL.WEIGHTS", missing])  # the old positional overrides
    with pytest.raises(ValueError, match="DATASETS.TEST is empty.*--dataset NAME"):
        predict.main(argv + ["--opts", "DATASETS.TEST", "()"])
    assert not (tmp_path / "o").exists()


def test_confidence_threshold_sets_both_keys_and_filters_instances(tmp_path):
    cfg = predict.build_cfg(CONFIG, TINY, confidence_threshold=0.7)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.7
    assert cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH == 0.7
    _write_images(tmp_path / "in", ["a.jpg", "b.jpg"])
    things = {}
    for threshold in ("0", "1"):
        out = tmp_path / f"out{threshold}"
        assert _main(tmp_path, "in", out, "--confidence-threshold", threshold) == 0
        data = check_consistent(out)
        segments = [s for a in data["annotations"] for s in a["segments_info"]]
        things[threshold] = sum(s["isthing"] for s in segments)
    assert things["0"] > 0 and things["1"] == 0


USER_MODULE = """
import os
from panoptic_fpn_ext.data import register_coco_panoptic_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
register_coco_panoptic_dataset(
    "my_fruit_val", HERE, HERE, os.path.join(HERE, "fruit.json")
)
"""
USER_CATEGORIES = [
    {"id": 7, "name": "apple", "isthing": 1},
    {"id": 9, "name": "pear", "isthing": 1},
    {"id": 30, "name": "table", "isthing": 0},
]


def test_import_registers_a_user_dataset_and_empty_weights_warn(tmp_path, installed_plugin):
    (tmp_path / "my_datasets.py").write_text(textwrap.dedent(USER_MODULE))
    fruit = {"images": [], "annotations": [], "categories": USER_CATEGORIES}
    (tmp_path / "fruit.json").write_text(json.dumps(fruit))
    _write_images(tmp_path / "in", ["a.jpg"])
    counts = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"]
    args = ("--input", "in", "--output", "out", "--dataset", "my_fruit_val")
    not_imported = _run(installed_plugin, tmp_path, *args, opts=counts)
    assert not_imported.returncode != 0
    assert "'my_fruit_val', which is not registered" in not_imported.stderr
    assert "--import MODULE" in not_imported.stderr
    # the config's 3 + 1 classes
    wrong_count = _run(installed_plugin, tmp_path, *args, "--import", "my_datasets")
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4, but dataset 'my_fruit_val' needs 2" in (
        wrong_count.stderr
    )
    result = _run(installed_plugin, tmp_path, *args, "--import", "my_datasets", opts=counts)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout  # Detectron2's logger writes to stdout
    assert "WARNING" in log
    assert "MODEL.WEIGHTS is empty: predicting with RANDOMLY INITIALISED" in log
    data = check_consistent(tmp_path / "out")
    assert data["categories"] == USER_CATEGORIES
    segments = [s for a in data["annotations"] for s in a["segments_info"]]
    assert segments and {s["category_id"] for s in segments} <= {7, 9, 30}


def test_list_images_predicts_a_file_named_twice_once(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    listed = predict.list_images([str(tmp_path), str(tmp_path / "b.jpg")], None)
    assert listed == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]


def test_visualisations_are_optional_and_bounded(tmp_path):
    _write_images(tmp_path / "in", ["wide.jpg"], size=(600, 900))
    assert _main(tmp_path, "in", tmp_path / "vis", "--vis-max-side", "300") == 0
    check_consistent(tmp_path / "vis")
    (name,) = os.listdir(tmp_path / "vis" / "visualizations")
    assert Image.open(tmp_path / "vis" / "visualizations" / name).size == (300, 200)
    assert _main(tmp_path, "in", tmp_path / "novis", "--no-vis") == 0
    check_consistent(tmp_path / "novis")
    assert not os.listdir(tmp_path / "novis" / "visualizations")


def test_parallel_images_and_batches_agree_with_one_image_at_a_time(tmp_path):
    """The CPU defaults (batches of 4, two at once, one torch thread each) against one image at
    a time: the same images and segments, the maps equal up to pixels on a rounding boundary
    (batched convolutions and fewer threads sum in another order)."""
    _write_images(tmp_path / "in", [f"{i}.png" for i in range(5)])
    _write_images(tmp_path / "in", ["other_size.png"], size=(56, 40))
    torch.manual_seed(0)
    weights = str(tmp_path / "random.pth")
    torch.save({"model": build_model(predict.build_cfg(CONFIG, TINY)).state_dict()}, weights)
    runs = {"one": ["--parallel", "1", "--batch-size", "1"], "default": []}
    data = {}
    for name, flags in runs.items():
        opts = ["MODEL.WEIGHTS", weights]
        assert _main(tmp_path, "in", tmp_path / name, "--no-vis", *flags, opts=opts) == 0
        data[name] = check_consistent(tmp_path / name)
    assert data["one"]["images"] == data["default"]["images"] and len(data["one"]["images"]) == 6
    for one, other in zip(data["one"]["annotations"], data["default"]["annotations"]):
        ids_one, ids_other = read_ids(tmp_path / "one", one), read_ids(tmp_path / "default", other)
        assert (ids_one == ids_other).mean() > 0.99
