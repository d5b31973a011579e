"""The predict tool, run as users run it: ``python -m panoptic_fpn_ext.tools.predict`` from the
installed wheel (``tests/installed.py``), in a subprocess whose working directory is outside the
repository, with the config given by name (a few checks call ``main`` in this process)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from file_snapshots import snapshot
from panoptic_fpn_ext.data import rgb2id
from panoptic_fpn_ext.tools import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAME = "quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
CONFIG = os.path.join(ROOT, "configs", CONFIG_NAME)
# Small inputs and few detections keep a random-weights model fast on a CPU.
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "48",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


_installed = {}


@pytest.fixture(autouse=True)
def _use_installed_wheel(installed_plugin):
    """The subprocesses below run the wheel installed by ``installed_plugin``."""
    _installed["plugin"] = installed_plugin


def _command(*args, opts=()):
    module = [sys.executable, "-m", "panoptic_fpn_ext.tools.predict", "--config-file", CONFIG_NAME]
    return module + list(args) + ["--opts", *TINY, *opts]


def _env():
    return _installed["plugin"].env()


def _run(cwd, *args, opts=()):
    return subprocess.run(
        _command(*args, opts=opts), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )


def _write_images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)



def _check_consistent(out):
    """The JSON lists exactly the PNGs and visualisations on disk, under unique names, and each
    PNG's segment ids are those of its entry. Returns the JSON."""
    with open(os.path.join(out, "panoptic_predictions.json")) as f:
        data = json.load(f)
    listed = [a["file_name"] for a in data["annotations"]]
    assert len(set(listed)) == len(listed)
    assert sorted(listed) == sorted(os.listdir(os.path.join(out, "panoptic_predictions")))
    assert sorted(listed) == sorted(os.listdir(os.path.join(out, "visualizations")))
    assert [a["image_id"] + ".png" for a in data["annotations"]] == listed
    assert [image["id"] for image in data["images"]] == [a["image_id"] for a in data["annotations"]]
    for annotation, image in zip(data["annotations"], data["images"]):
        png = Image.open(os.path.join(out, "panoptic_predictions", annotation["file_name"]))
        ids = rgb2id(np.asarray(png.convert("RGB")))
        assert ids.shape == (image["height"], image["width"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in annotation["segments_info"]}
    return data


def test_colliding_names_and_a_broken_image(tmp_path):
    _write_images(tmp_path / "in", ["a/img.jpg", "a/img.png", "b/img.jpg"])
    (tmp_path / "in" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ncut short")
    result = _run(tmp_path, "--input", "in/a", "in/b", "--output", "out")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 image(s) could not be read" in result.stderr
    assert "in/b/broken.png" in result.stderr
    assert "Predicted 3 of 4 images" in result.stdout
    data = _check_consistent(tmp_path / "out")
    names = {image["id"]: image["file_name"] for image in data["images"]}
    assert names == {
        "a__img_jpg": "in/a/img.jpg",
        "a__img_png": "in/a/img.png",
        "b__img": "in/b/img.jpg",
    }


def test_output_names_are_unique_or_refused(tmp_path):
    paths = [str(tmp_path / p) for p in ("x/1.jpg", "x/2.jpg", "y/1.jpg", "y/1.png")]
    assert predict.output_names(paths) == ["x__1", "x__2", "y__1_jpg", "y__1_png"]
    assert predict.output_names(paths[:2]) == ["1", "2"]  # one folder: the file stems
    clash = [str(tmp_path / "a__b.jpg"), str(tmp_path / "a" / "b.jpg")]
    with pytest.raises(ValueError, match=r"a__b.jpg and .*b.jpg would both be written as a__b"):
        predict.output_names(clash)


def _start(cwd, images_dir, out, *args):
    # DATASETS.TEST names the quick-start set: its metadata, no files needed.
    return subprocess.Popen(
        _command("--input", images_dir, "--output", out, *args),
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_pngs(proc, folder, count, timeout=240):
    deadline = time.time() + timeout
    while not os.path.isdir(folder) or len(os.listdir(folder)) < count:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)


# Imported by the predict tool (--import): after its third image it waits for a signal, so that
# the signal always finds the run unfinished, however fast the machine predicts.
WAIT_AFTER_THIRD_IMAGE = """
import signal
from panoptic_fpn_ext.tools import predict
add, added = predict.PredictionFolder.add, []
def add_then_wait(self, *args, **kwargs):
    add(self, *args, **kwargs)
    added.append(args[0])
    if len(added) == 3:
        signal.pause()
predict.PredictionFolder.add = add_then_wait
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_a_json_of_the_pngs_present(tmp_path, stop):
    _write_images(tmp_path / "in", [f"{i}.png" for i in range(8)])
    (tmp_path / "wait_after_third_image.py").write_text(WAIT_AFTER_THIRD_IMAGE)
    proc = _start(tmp_path, "in", "out", "--import", "wait_after_third_image")
    # A third PNG: the first two images are complete (PNG, visualisation, listed).
    _wait_for_pngs(proc, tmp_path / "out" / "panoptic_predictions", 3)
    proc.send_signal(stop)
    assert proc.wait(timeout=120) in (128 + stop, -stop)
    if stop == signal.SIGTERM:  # caught: the JSON lists exactly the files present
        data = _check_consistent(tmp_path / "out")
        assert len(data["annotations"]) in (2, 3)  # the third is listed unless cut short
    else:  # nothing runs after SIGKILL: the JSON lists a subset of the PNGs present
        with open(tmp_path / "out" / "panoptic_predictions.json") as f:
            listed = {a["file_name"] for a in json.load(f)["annotations"]}
        assert listed <= set(os.listdir(tmp_path / "out" / "panoptic_predictions"))


def test_error_mid_image_removes_its_files_and_keeps_the_json_exact(tmp_path, monkeypatch):
    """An exception after an image's PNG was written (while drawing its visualisation)."""
    _write_images(tmp_path / "in", [f"{i}.png" for i in range(4)])
    calls = []
    draw = predict.PredictionFolder._save_visualization

    def fail_third(self, *args):
        calls.append(args[0])
        if len(calls) == 3:
            raise RuntimeError("injected")
        draw(self, *args)

    monkeypatch.setattr(predict.PredictionFolder, "_save_visualization", fail_third)
    with pytest.raises(RuntimeError, match="injected"):
        _main(tmp_path, "in", tmp_path / "out")
    data = _check_consistent(tmp_path / "out")
    assert [a["image_id"] for a in data["annotations"]] == ["0", "1"]  # "2.png" was removed


def _main(tmp_path, images, out, *flags, opts=()):
    """``predict.main`` in this process (no interpreter start-up: for checks of many runs)."""
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / images), "--output", str(out)]
    return predict.main(argv + list(flags) + ["--opts", *TINY, *opts])


def test_reused_output_folder_is_refused_then_replaced_whole(tmp_path):
    _write_images(tmp_path / "first", ["p.jpg", "q.jpg"])
    _write_images(tmp_path / "second", ["r.jpg"], seed=1)
    out = tmp_path / "out"
    assert _main(tmp_path, "first", out) == 0
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=r"panoptic_predictions.json.*--overwrite"):
        _main(tmp_path, "second", out)
    assert snapshot(out) == before
    assert _main(tmp_path, "second", out, "--overwrite") == 0
    data = _check_consistent(out)
    assert [a["image_id"] for a in data["annotations"]] == ["r"]


def test_opts_reach_the_config_and_errors_name_the_key(tmp_path):
    _write_images(tmp_path / "in", ["a.jpg"])
    missing = str(tmp_path / "no_model.pth")
    result = _run(tmp_path, "--input", "in", "--output", "out", opts=["MODEL.WEIGHTS", missing])
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
        data = _check_consistent(out)
        thing_ids = {c["id"] for c in data["categories"] if c["isthing"]}
        segments = [s for a in data["annotations"] for s in a["segments_info"]]
        things[threshold] = sum(s["category_id"] in thing_ids for s in segments)
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


def test_import_registers_a_user_dataset_and_empty_weights_warn(tmp_path):
    (tmp_path / "my_datasets.py").write_text(textwrap.dedent(USER_MODULE))
    fruit = {"images": [], "annotations": [], "categories": USER_CATEGORIES}
    (tmp_path / "fruit.json").write_text(json.dumps(fruit))
    _write_images(tmp_path / "in", ["a.jpg"])
    counts = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"]
    args = ("--input", "in", "--output", "out", "--dataset", "my_fruit_val")
    not_imported = _run(tmp_path, *args, opts=counts)
    assert not_imported.returncode != 0
    assert "'my_fruit_val', which is not registered" in not_imported.stderr
    assert "--import MODULE" in not_imported.stderr
    wrong_count = _run(tmp_path, *args, "--import", "my_datasets")  # the config's 3 + 1 classes
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4, but dataset 'my_fruit_val' needs 2" in (
        wrong_count.stderr
    )
    result = _run(tmp_path, *args, "--import", "my_datasets", opts=counts)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout  # Detectron2's logger writes to stdout
    assert "WARNING" in log
    assert "MODEL.WEIGHTS is empty: predicting with RANDOMLY INITIALISED" in log
    data = _check_consistent(tmp_path / "out")
    assert data["categories"] == USER_CATEGORIES
    segments = [s for a in data["annotations"] for s in a["segments_info"]]
    assert segments and {s["category_id"] for s in segments} <= {7, 9, 30}


def test_list_images_predicts_a_file_named_twice_once(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    listed = predict.list_images([str(tmp_path), str(tmp_path / "b.jpg")], None)
    assert listed == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
