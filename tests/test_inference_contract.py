"""The contract every inference tool keeps (README "Predicting: one contract for every tool"),
checked on the predict tool and on the deployed runner alike: stable unique names, skipped
images named with exit status 1, recursive folders, a reused output folder refused, a JSON that
lists exactly the PNGs present after an error or a signal, the same JSON fields, and the same
maps from the same pixels.

Both tools predict with one model: the quick-start R18 architecture for a user's own dataset
(registered by a module passed with ``--import``), random weights calibrated to make
detections, exported once by the export tool for the module's tests (~30 s).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from file_snapshots import snapshot
from panoptic_fpn_ext.data import rgb2id
from panoptic_fpn_ext.data.synthetic import random_shapes_scene
from panoptic_fpn_ext.tools import export as export_tool
from panoptic_fpn_ext.tools import predict
from panoptic_fpn_ext.tools.image_inputs import output_name

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from bench_inference import calibrate  # noqa: E402

CONFIG_NAME = "quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
DATASET, MODULE = "contract_fruit_val", "contract_datasets"
OPTS = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "20",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05", "MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT",
    "contiguous", "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2",
    "DATALOADER.NUM_WORKERS", "1",
]  # fmt: skip
USER_MODULE = f"""
import os
from panoptic_fpn_ext.data import register_coco_panoptic_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
register_coco_panoptic_dataset("{DATASET}", HERE, HERE, os.path.join(HERE, "fruit.json"))
"""
CATEGORIES = [
    {"id": 7, "name": "apple", "isthing": 1},
    {"id": 9, "name": "pear", "isthing": 1},
    {"id": 30, "name": "table", "isthing": 0},
]
TOOLS = ["predict", "runner"]
# The share of pixels of a padded image (a test-size side under 65 px, which the program pads
# to 96 where Detectron2 pads to 32 or 64) whose category the runner gives as the predict tool.
PADDED_CATEGORY_AGREEMENT = 0.75


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """{"home": the user's folder (module, dataset JSON, weights), "weights", "runner": the
    runner copied next to the exported graph program}."""
    home = tmp_path_factory.mktemp("user")
    (home / f"{MODULE}.py").write_text(textwrap.dedent(USER_MODULE))
    (home / "fruit.json").write_text(json.dumps({"images": [], "annotations": [],
                                                 "categories": CATEGORIES}))
    sys.path.insert(0, str(home))
    try:
        weights = str(home / "weights.pth")
        _save_calibrated_weights(weights)
        export = home / "export"
        export_tool.main(
            ["--config-file", CONFIG_NAME, "--output", str(export), "--format", "graph",
             "--import", MODULE, "--dataset", DATASET, "--opts", *OPTS, "MODEL.WEIGHTS", weights]
        )
        yield {"home": home, "weights": weights, "runner": str(export / "run_panoptic.py")}
    finally:
        sys.path.remove(str(home))


def _save_calibrated_weights(path):
    from detectron2.modeling import build_model

    importlib.import_module(MODULE)
    cfg = predict.build_cfg(CONFIG_NAME, OPTS, DATASET)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = np.ascontiguousarray(_scene(96, 128, 0)[:, :, ::-1].transpose(2, 0, 1))
    calibrate(model, [{"image": torch.from_numpy(image).float()}])
    torch.save({"model": model.state_dict()}, path)


def _scene(height, width, seed):
    return random_shapes_scene(height, width, np.random.default_rng(seed))[0]


def _write_images(folder, names, size=(96, 128)):
    for seed, name in enumerate(names):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(_scene(*size, seed)).save(path)


def load_runner(path):
    spec = importlib.util.spec_from_file_location("run_panoptic_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_vis(tool):
    """The flag that spares the predict tool its visualisations where a test needs none, and
    one image per model call (as the runner), so that the maps can be compared bit for bit."""
    return ["--no-vis", "--batch-size", "1"] if tool == "predict" else []


def run_tool(tool, deployment, inputs, out, *flags):
    """One run in this process; returns the exit status."""
    if tool == "predict":
        argv = ["--config-file", CONFIG_NAME, "--input", *map(str, inputs), "--output", str(out),
                "--import", MODULE, "--dataset", DATASET, *flags, "--opts", *OPTS,
                "MODEL.WEIGHTS", deployment["weights"]]
        return predict.main(argv)
    argv = ["--input", *map(str, inputs), "--output", str(out), *flags]
    return load_runner(deployment["runner"]).main(argv)


def start_tool(tool, deployment, inputs, out, installed_plugin):
    """One run in a subprocess, as users start it: the predict tool from the installed wheel
    (in the user's folder, where --import finds the module), the runner as a script."""
    if tool == "predict":
        command = [sys.executable, "-m", "panoptic_fpn_ext.tools.predict", "--config-file",
                   CONFIG_NAME, "--input", *inputs, "--output", out, "--import", MODULE,
                   "--dataset", DATASET, "--opts", *OPTS, "MODEL.WEIGHTS", deployment["weights"]]
        env = installed_plugin.env()
    else:
        command = [sys.executable, deployment["runner"], "--input", *inputs, "--output", out]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen(command, cwd=deployment["home"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def check_consistent(out):
    """The JSON lists exactly the PNGs (and visualisations, if any) on disk, under unique
    names; each PNG's segments are those of its entry, with their areas. Returns the JSON."""
    with open(os.path.join(out, "panoptic_predictions.json")) as f:
        data = json.load(f)
    listed = [a["file_name"] for a in data["annotations"]]
    assert len(set(listed)) == len(listed)
    assert sorted(listed) == sorted(os.listdir(os.path.join(out, "panoptic_predictions")))
    vis = os.path.join(out, "visualizations")
    if os.path.isdir(vis) and os.listdir(vis):
        assert sorted(listed) == sorted(os.listdir(vis))
    assert [a["image_id"] + ".png" for a in data["annotations"]] == listed
    assert [image["id"] for image in data["images"]] == [a["image_id"] for a in data["annotations"]]
    for annotation, image in zip(data["annotations"], data["images"]):
        ids = read_ids(out, annotation)
        assert ids.shape == (image["height"], image["width"])
        present, counts = np.unique(ids[ids > 0], return_counts=True)
        segments = annotation["segments_info"]
        areas = dict(zip(present.tolist(), counts.tolist()))
        assert {s["id"]: s["area"] for s in segments} == areas
    return data


def read_ids(out, annotation):
    png = Image.open(os.path.join(out, "panoptic_predictions", annotation["file_name"]))
    return rgb2id(np.asarray(png.convert("RGB")))


def test_output_names_are_the_same_in_both_tools(deployment, tmp_path):
    runner = load_runner(deployment["runner"])
    paths = ["a/img.jpg", "a/img.png", str(tmp_path / "b" / "img.jpg"), "x/../a/img.jpg", "c.d.e"]
    names = [output_name(p) for p in paths]
    assert names == [runner.output_name(p) for p in paths]
    assert names[0].startswith("img_jpg_") and names[0] == names[3]
    assert len(set(names)) == 4


@pytest.mark.parametrize("tool", TOOLS)
def test_images_of_one_name_get_distinct_names_stable_across_runs(tool, deployment, tmp_path):
    _write_images(tmp_path / "in", ["sub1/dup.jpg", "sub1/dup.png", "sub2/dup.png"])
    files = [tmp_path / "in" / p for p in ("sub1/dup.jpg", "sub1/dup.png", "sub2/dup.png")]
    assert run_tool(tool, deployment, files, tmp_path / "all", *no_vis(tool)) == 0
    together = {i["file_name"]: i["id"] for i in check_consistent(tmp_path / "all")["images"]}
    assert len(set(together.values())) == 3
    assert run_tool(tool, deployment, files[1:2], tmp_path / "alone", *no_vis(tool)) == 0
    alone = {i["file_name"]: i["id"] for i in check_consistent(tmp_path / "alone")["images"]}
    assert alone == {str(files[1]): together[str(files[1])]}


@pytest.mark.parametrize("tool", TOOLS)
def test_unreadable_images_are_skipped_named_and_exit_1(tool, deployment, tmp_path, capsys):
    _write_images(tmp_path / "in", ["a.png", "b.jpg"])
    whole = (tmp_path / "in" / "b.jpg").read_bytes()
    (tmp_path / "in" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(np.zeros((20, 30), np.float32)).save(tmp_path / "in" / "float.tif")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert run_tool(tool, deployment, [tmp_path / "in"], tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "Skipped 2 image(s) that could not be read" in err
    assert f"{tmp_path / 'in' / 'truncated.jpg'}: " in err and "truncated" in err
    assert f"{tmp_path / 'in' / 'float.tif'}: " in err and "32-bit float" in err
    assert "Ignored 1 file(s)" in err and str(tmp_path / "in" / "notes.txt") in err
    data = check_consistent(tmp_path / "out")
    assert sorted(os.path.basename(i["file_name"]) for i in data["images"]) == ["a.png", "b.jpg"]


@pytest.mark.parametrize("tool", TOOLS)
def test_folders_recurse_and_skip_the_output_folder(tool, deployment, tmp_path, capsys):
    _write_images(tmp_path / "in", ["a.png", "x/b.png", "x/y/c.jpg"])
    out = tmp_path / "in" / "predictions"  # inside the input folder
    for flags in ([], ["--overwrite"]):
        assert run_tool(tool, deployment, [tmp_path / "in"], out, *flags) == 0
        assert "Predicted 3 of 3 images" in capsys.readouterr().out
    data = check_consistent(out)
    relative = sorted(os.path.relpath(i["file_name"], tmp_path / "in") for i in data["images"])
    assert relative == ["a.png", "x/b.png", "x/y/c.jpg"]


@pytest.mark.parametrize("tool", TOOLS)
def test_reused_output_folder_is_refused_then_replaced_whole(tool, deployment, tmp_path):
    _write_images(tmp_path / "first", ["p.jpg", "q.jpg"])
    _write_images(tmp_path / "second", ["r.jpg"])
    out = tmp_path / "out"
    assert run_tool(tool, deployment, [tmp_path / "first"], out) == 0
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=r"panoptic_predictions.json.*--overwrite"):
        run_tool(tool, deployment, [tmp_path / "second"], out)
    assert snapshot(out) == before
    assert run_tool(tool, deployment, [tmp_path / "second"], out, "--overwrite") == 0
    data = check_consistent(out)
    assert [i["file_name"] for i in data["images"]] == [str(tmp_path / "second" / "r.jpg")]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_leaves_a_json_of_the_pngs_present(
    tool, stop, deployment, tmp_path, installed_plugin
):
    count = 40
    _write_images(tmp_path / "in", [f"{i:02d}.png" for i in range(count)])
    proc = start_tool(tool, deployment, [str(tmp_path / "in")], str(tmp_path / "out"),
                      installed_plugin)
    pngs = tmp_path / "out" / "panoptic_predictions"
    deadline = time.time() + 240
    while not os.path.isdir(pngs) or len(os.listdir(pngs)) < 3:  # two images complete
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(stop)
    assert proc.wait(timeout=120) == 128 + stop, proc.stderr.read()[-3000:]
    data = check_consistent(tmp_path / "out")
    assert 2 <= len(data["annotations"]) < count


@pytest.mark.parametrize("tool", TOOLS)
def test_an_error_mid_run_keeps_the_json_exact(tool, deployment, tmp_path, monkeypatch):
    """An exception while an image's files are written (its visualisation; the runner's PNG)."""
    _write_images(tmp_path / "in", [f"{i}.png" for i in range(5)])
    runner = load_runner(deployment["runner"])
    target, name = ((predict.PredictionFolder, "_save_visualization") if tool == "predict"
                    else (runner, "id_map_png"))
    original, calls = getattr(target, name), []

    def fail_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return original(*args)

    monkeypatch.setattr(target, name, fail_third)
    with pytest.raises(RuntimeError, match="injected"):
        if tool == "predict":
            run_tool(tool, deployment, [tmp_path / "in"], tmp_path / "out")
        else:
            runner.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    data = check_consistent(tmp_path / "out")
    listed = [os.path.basename(i["file_name"]) for i in data["images"]]
    assert listed[:2] == ["0.png", "1.png"] and "2.png" not in listed


def awkward_images(folder):
    """EXIF orientations 1-8, gray, 16-bit gray, RGBA, palette, images resized up and down, and
    extreme aspect ratios (test sizes the program pads). Returns their paths."""
    os.makedirs(folder, exist_ok=True)
    base = Image.fromarray(_scene(96, 144, 1))
    paths = []
    for orientation in range(1, 9):
        exif = base.getexif()
        exif[0x0112] = orientation
        paths.append(os.path.join(folder, f"exif{orientation}.jpg"))
        base.save(paths[-1], exif=exif)
    gray = _scene(96, 128, 2)[:, :, 0]
    images = {
        "gray.png": Image.fromarray(gray),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257 + 100),
        "rgba.png": Image.fromarray(np.dstack([_scene(100, 96, 3), np.full((100, 96), 99,
                                                                          np.uint8)])),
        "palette.png": Image.fromarray(_scene(96, 120, 4)).convert("P"),
        "large.jpg": Image.fromarray(_scene(300, 420, 5)),
        "small.png": Image.fromarray(_scene(40, 60, 6)),
        "wide.png": Image.fromarray(_scene(128, 2048, 7)),
        "tall.png": Image.fromarray(_scene(1200, 96, 8)),
    }
    for name, image in images.items():
        paths.append(os.path.join(folder, name))
        image.save(paths[-1])
    return paths


def test_awkward_images_give_the_predict_tools_maps_and_json(deployment, tmp_path):
    paths = awkward_images(tmp_path / "in")
    assert Image.open(tmp_path / "in" / "gray16.png").mode == "I;16"
    for tool in TOOLS:
        assert run_tool(tool, deployment, paths, tmp_path / tool, *no_vis(tool)) == 0
    expected, actual = (check_consistent(tmp_path / tool) for tool in TOOLS)
    assert actual["images"] == expected["images"] and actual["categories"] == CATEGORIES
    assert (expected["images"][5]["height"], expected["images"][5]["width"]) == (144, 96)  # EXIF 6
    runner = load_runner(deployment["runner"])
    padded = 0
    for image, ours, theirs in zip(expected["images"], expected["annotations"],
                                   actual["annotations"]):
        for segment in ours["segments_info"] + theirs["segments_info"]:
            fields = {"id", "category_id", "isthing", "area"}
            assert set(segment) == (fields | {"score"} if segment["isthing"] else fields)
        if min(runner.test_size(image["height"], image["width"], 96, 160)) >= 65:
            assert np.array_equal(read_ids(tmp_path / "predict", ours),
                                  read_ids(tmp_path / "runner", theirs)), image["file_name"]
            assert ours["segments_info"] == theirs["segments_info"], image["file_name"]
        else:
            padded += 1
            agreement = (category_map(tmp_path / "predict", ours)
                         == category_map(tmp_path / "runner", theirs)).mean()
            assert agreement >= PADDED_CATEGORY_AGREEMENT, (image["file_name"], agreement)
    assert padded == 2
    things = [s for a in expected["annotations"] for s in a["segments_info"] if s["isthing"]]
    assert things and all(s["category_id"] in (7, 9) for s in things)


def category_map(out, annotation):
    """int (H, W): each pixel's dataset category id, -1 where unlabelled."""
    ids = read_ids(out, annotation)
    lookup = np.full(ids.max() + 1, -1)
    for segment in annotation["segments_info"]:
        lookup[segment["id"]] = segment["category_id"]
    return lookup[ids]


def test_export_refuses_positional_overrides_naming_opts(capsys):
    with pytest.raises(SystemExit):
        export_tool.main(["--config-file", CONFIG_NAME, "--output", "x", "MODEL.WEIGHTS", "w"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: MODEL.WEIGHTS w" in err and "--opts KEY VALUE" in err
