"""The exportable panoptic inference: its combiner and NMS equal the eager ones, the whole
inference equals ``PanopticFPNExt`` (NCHW) at any output size, and the exported artifacts (pt2
and graph) equal it too and run from a process that cannot import Detectron2 or
panoptic_fpn_ext."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from PIL import Image
from torchvision.ops import boxes as box_ops

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.data.panoptic_io import read_image_file, rgb2id
from panoptic_fpn_ext.data.synthetic import generate_shapes_dataset, random_shapes_scene
from panoptic_fpn_ext.deploy import (
    PanopticInference,
    combine_panoptic_table,
    full_image_masks,
)
from panoptic_fpn_ext.deploy.detect import VANILLA_NMS_ABOVE, batched_nms
from panoptic_fpn_ext.modeling import combine_panoptic
from panoptic_fpn_ext.tools import export as export_tool

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from bench_inference import calibrate  # noqa: E402
from test_combiner import THRESHOLD_SETS, random_case  # noqa: E402

TINY = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
# Random weights: keep low-scoring detections, so that both things and stuff come out
OPTS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05", "TEST.DETECTIONS_PER_IMAGE", "30"]
SIZES = [(128, 128), (128, 200), (96, 130), (256, 70), (65, 65)]


def table_as_segments_info(table):
    """The segment table as combine_panoptic's segments_info (without thing "instance_id")."""
    info = []
    rows = zip(*(table[k].tolist() for k in ("id", "category", "is_thing", "score", "area")))
    for segment_id, category, is_thing, score, area in rows:
        segment = {"id": segment_id, "isthing": is_thing, "category_id": category}
        segment.update({"score": score} if is_thing else {"area": area})
        info.append(segment)
    return info


def assert_table_matches(instances, semantic, thresholds, num_labels):
    ref_map, ref_info = combine_panoptic(instances, semantic, *thresholds)
    table = combine_panoptic_table(
        instances.scores,
        instances.pred_classes,
        full_image_masks(instances.pred_masks),
        semantic,
        num_labels,
        *thresholds,
    )
    assert torch.equal(table["panoptic"], ref_map)
    for segment in ref_info:
        segment.pop("instance_id", None)
    assert table_as_segments_info(table) == ref_info
    areas = torch.bincount(ref_map.flatten().long(), minlength=len(ref_info) + 1)[1:]
    assert table["area"].tolist() == areas.tolist()
    assert torch.isnan(table["score"][~table["is_thing"]]).all()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tie_scores", [False, True])
def test_combine_table_equals_combine_panoptic_on_fuzz_cases(seed, tie_scores):
    n = [0, 1, 3, 8, 20, 40][seed % 6]
    instances, semantic, _ = random_case(seed, n, tie_scores=tie_scores)
    for thresholds in THRESHOLD_SETS:
        assert_table_matches(instances, semantic, thresholds, num_labels=5)


@pytest.mark.parametrize("count", [0, 1, 40, 1500])
def test_batched_nms_equals_torchvision_on_both_sides_of_its_strategy_switch(count):
    g = torch.Generator().manual_seed(count)
    xy = torch.rand(count, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(count, 2, generator=g) * 30 + 1], dim=1)
    scores = (torch.rand(count, generator=g) * 4).floor() / 4  # ties
    classes = torch.randint(0, 5, (count,), generator=g)
    expected = box_ops.batched_nms(boxes, scores, classes, 0.5)
    assert (4 * count > VANILLA_NMS_ABOVE["cpu"]) == (count == 1500)
    kept = batched_nms(boxes, scores, classes, 0.5, 5, VANILLA_NMS_ABOVE["cpu"])
    assert torch.equal(kept, expected)


def tiny_cfg(*opts):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, TINY)
    cfg.merge_from_list(OPTS + ["MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "contiguous"] + list(opts))
    return cfg


def bgr_image(height: int, width: int, seed: int) -> torch.Tensor:
    rgb, _, _ = random_shapes_scene(height, width, np.random.default_rng(seed))
    return torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))).float()


@pytest.fixture(scope="module")
def val_images(tmp_path_factory):
    """Four images of the synthetic validation split, as files and as BGR float tensors."""
    root = str(tmp_path_factory.mktemp("shapes"))
    paths = generate_shapes_dataset(root, "val", 4)
    files = sorted(os.path.join(paths["image_root"], n) for n in os.listdir(paths["image_root"]))
    # decoded as Detectron2's read_image (and the runner) decode them
    images = [torch.from_numpy(read_image_file(f, "BGR").transpose(2, 0, 1).copy()).float()
              for f in files]
    return files, images


@pytest.fixture(scope="module")
def model(val_images):
    """The quick-start R18 model, random weights calibrated on one validation image, saved."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    calibrate(model, [{"image": val_images[1][0]}])
    return model


def eager_panoptic(model, image, output_size=None):
    """The model's (map, segments_info) at ``output_size`` (H, W), default the input size."""
    inputs = {"image": image}
    if output_size is not None:
        inputs.update(height=output_size[0], width=output_size[1])
    with torch.no_grad():
        return model([inputs])[0]["panoptic_seg"]


def output_size(height, width):
    """The empty (0, H, W) tensor that gives the program its output size."""
    return torch.empty((0, height, width))


def assert_outputs_equal(outputs, reference):
    ref_map, ref_info = reference
    table = dict(zip(("panoptic", "id", "category", "is_thing", "score", "area"), outputs))
    assert torch.equal(table["panoptic"], ref_map)
    for segment in ref_info:
        segment.pop("instance_id", None)
    assert table_as_segments_info(table) == ref_info


# (image size, output size): at the input size, and resized up, down and to another aspect
RESIZES = [((128, 128), (128, 128)), ((96, 128), (480, 640)), ((128, 90), (100, 70))]


@pytest.mark.numerics
def test_inference_equals_the_model_at_any_output_size(model, val_images):
    inference = PanopticInference(model).eval()
    kinds = set()
    for (image, ((height, width), out)) in zip(val_images[1], RESIZES):
        image = image[:, :height, :width]
        with torch.no_grad():
            outputs = inference(image, output_size(*out))
        assert_outputs_equal(outputs, eager_panoptic(model, image, out))
        kinds |= set(outputs[3].tolist())
    assert kinds == {True, False}  # things and stuff were exercised


def test_inference_needs_no_detection_limit(model, val_images):
    """The combiner's loop runs over the detections there are: no DETECTIONS_PER_IMAGE bound."""
    model.roi_heads.box_predictor.test_topk_per_image = -1
    try:
        with torch.no_grad():
            outputs = PanopticInference(model).eval()(val_images[1][0], output_size(128, 128))
        assert_outputs_equal(outputs, eager_panoptic(model, val_images[1][0]))
    finally:
        model.roi_heads.box_predictor.test_topk_per_image = 30


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    """The model exported by the export tool (pt2 and graph), once for the tests that use it."""
    out = tmp_path_factory.mktemp("export")
    weights = str(out / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)
    args = ["--config-file", TINY, "--output", str(out), "--opts"]
    return export_tool.main(args + OPTS + ["MODEL.WEIGHTS", weights])


@pytest.mark.slow  # exporting takes ~1 min on 2 cores, the checks another
def test_artifacts_equal_the_model_at_any_size(model, artifact, val_images):
    pt2, graph = artifact
    programs = [torch.export.load(pt2).module(), load_runner().load_graph_program(graph, "cpu")[0]]
    for seed, (height, width) in enumerate(SIZES):
        image = bgr_image(height, width, seed) if seed else val_images[1][0]
        out = (2 * height + 1, width - 3)
        reference = eager_panoptic(model, image, out)
        for program in programs:
            with torch.no_grad():
                outputs = program(image, output_size(*out))
            assert outputs[0].shape == out
            assert_outputs_equal(outputs, reference)
    small = bgr_image(128, 256, 5)[:, :16]  # padded by the program to 96 rows, not 32
    with torch.no_grad():
        outputs = programs[1](small, output_size(128, 2048))
    assert outputs[0].shape == (128, 2048)


@pytest.mark.slow  # torch.export.load takes ~20 s
def test_the_graph_artifact_loads_in_a_fraction_of_torch_export_load(artifact):
    """The runner's start-up: its default artifact loads at least 20x faster than the pt2."""
    pt2, graph = artifact
    runner = load_runner(os.path.join(os.path.dirname(pt2), "run_panoptic.py"))
    assert runner.default_artifact() == graph
    start = time.perf_counter()
    runner.load_artifact(graph, "cpu")
    graph_seconds = time.perf_counter() - start
    start = time.perf_counter()
    runner.load_artifact(pt2, "cpu")
    assert graph_seconds * 20 < time.perf_counter() - start


BLOCKER = textwrap.dedent(
    """
    import runpy, sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("detectron2", "panoptic_fpn_ext"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Blocker())
    runner = sys.argv[1]
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(runner, run_name="__main__")
    finally:
        leaked = [m for m in sys.modules if m.split(".")[0] in ("detectron2", "panoptic_fpn_ext")]
        assert not leaked, leaked
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("artifact_name", [None, "model.pt2"])
def test_runner_writes_coco_panoptic_without_detectron2(model, artifact, val_images, tmp_path,
                                                        artifact_name):
    """The runner, copied next to the artifacts, with the graph program (its default) or the
    pt2 file, in a process where Detectron2 and the plugin cannot be imported."""
    files, images = val_images
    folder = os.path.dirname(artifact[0])
    runner = os.path.join(folder, "run_panoptic.py")
    out = tmp_path / "out"
    # one image at a time, with this process's torch threads: the eager model's rounding
    args = [runner, "--input"] + files[:2] + ["--output", str(out), "--parallel", "1"]
    if artifact_name:
        args += ["--artifact", os.path.join(folder, artifact_name)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER] + args, env=env, cwd=str(tmp_path),
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "panoptic_predictions.json").read_text())
    categories = {c["id"]: c for c in data["categories"]}
    for path, image, entry in zip(files, images, data["annotations"]):
        png = np.asarray(Image.open(out / "panoptic_predictions" / entry["file_name"]))
        ref_map, ref_info = eager_panoptic(model, image)
        assert np.array_equal(rgb2id(png), ref_map.numpy())
        assert [s["id"] for s in entry["segments_info"]] == [s["id"] for s in ref_info]
        for segment in entry["segments_info"]:
            assert categories[segment["category_id"]]["isthing"] == segment["isthing"]
            assert segment["area"] == int((ref_map == segment["id"]).sum())


@pytest.mark.gpu
def test_cuda_artifact_equals_the_cuda_model(val_images, tmp_path):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.DEVICE", "cuda")).eval()
    calibrate(model, [{"image": val_images[1][0].cuda()}])
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)
    opts = OPTS + ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cuda"]
    args = ["--config-file", TINY, "--output", str(tmp_path), "--format", "pt2", "--opts"]
    (artifact,) = export_tool.main(args + opts)
    program = torch.export.load(artifact).module()
    for seed, (height, width) in enumerate(SIZES):
        image = bgr_image(height, width, seed).cuda()
        out = (height + 7, 2 * width)
        with torch.no_grad():
            outputs = program(image, output_size(*out).cuda())
        assert outputs[0].device.type == "cuda"
        assert_outputs_equal(outputs, eager_panoptic(model, image, out))


def load_runner(path=export_tool.RUNNER):
    spec = importlib.util.spec_from_file_location("run_panoptic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (100, 1000), (128, 128), (90, 300)])
def test_runner_resizes_like_resize_shortest_edge(size):
    runner = load_runner()
    expected = ResizeShortestEdge.get_output_shape(*size, 128, 256)
    assert runner.test_size(*size, 128, 256) == expected


@pytest.mark.slow
def test_r50_coco_artifact_equals_the_model(tmp_path):
    """The COCO R50 config (80 thing classes, 54 semantic labels, per-class NMS over 80 classes)
    with calibrated random weights, exported for images up to 320 px."""
    config = "configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"]
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, config)
    cfg.merge_from_list(opts + ["MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "contiguous"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calibrate(model, [{"image": bgr_image(256, 320, 9)}])
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)
    args = ["--config-file", config, "--output", str(tmp_path), "--max-side", "320"]
    args += ["--format", "pt2", "--opts"]
    (artifact,) = export_tool.main(args + opts[2:] + ["MODEL.WEIGHTS", weights])
    program = torch.export.load(artifact).module()
    for seed, (height, width) in enumerate([(256, 320), (200, 150)]):
        image = bgr_image(height, width, seed)
        out = (2 * height, width + 5)
        with torch.no_grad():
            outputs = program(image, output_size(*out))
        assert_outputs_equal(outputs, eager_panoptic(model, image, out))
        assert outputs[3].any()
