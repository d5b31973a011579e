"""PanopticQualityEvaluator: results equal the reference's, in Detectron2's format; bad inputs
are named; distributed evaluation merges statistics; the evaluators of train_net.py."""

import itertools
import math
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from float_reference import pq_tolerance, within
from png_files import encode_png
from panoptic_eval_cases import (
    CATEGORIES,
    METADATA,
    NUM_THINGS,
    PanopticImage,
    model_input,
    model_output,
    random_image,
    reference_pq,
    register_case_dataset,
    segment,
)
from panoptic_fpn_ext import add_panoptic_fpn_ext_config
from panoptic_fpn_ext.data import (
    PanopticDataError,
    generate_shapes_dataset,
    id2rgb,
    register_coco_panoptic_dataset,
)
from panoptic_fpn_ext.data.synthetic import shapes_paths
from panoptic_fpn_ext.evaluation import (
    PanopticPredictionError,
    PanopticQualityEvaluator,
    SemanticFromPanoptic,
    build_panoptic_fpn_evaluators,
)
from panoptic_fpn_ext.evaluation import panoptic_evaluator as evaluator_module
from panoptic_fpn_ext.evaluation.png import read_filtered_png

CLASS_NAMES = [c["name"] for c in CATEGORIES]
_names = itertools.count()


def case_images(count=12, seed=0):
    rng = np.random.default_rng(seed)
    return [random_image(rng, image_id) for image_id in range(count)]


def registered(tmp_path, images):
    """Register the GT of ``images`` under a fresh dataset name; returns the name."""
    name = f"test_pq_evaluator_{next(_names)}"
    register_case_dataset(name, str(tmp_path), images)
    return name


def run(evaluator, images, root, batch_size=2):
    evaluator.reset()
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        evaluator.process([model_input(i, root) for i in batch], [model_output(i) for i in batch])
    return evaluator.evaluate()


def assert_results_match(results, expected, tol=pq_tolerance(100)):
    """Detectron2-format results (percent) equal the reference's (fractions) to ``tol`` percent."""
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            value = results[f"{metric.upper()}{suffix}"]
            if expected[group]["n"] == 0:
                assert math.isnan(value)
            else:
                difference = abs(value - 100 * expected[group][metric])
                assert within("PQ/SQ/RQ vs reference (%)", difference, tol), (group, metric)
    for category in CATEGORIES:
        for metric in ("pq", "sq", "rq"):
            value = results[f"{metric.upper()}_{category['name']}"]
            reference = 100 * expected["per_class"][category["id"]][metric]
            if not (math.isnan(value) and reference == 0):
                assert within("PQ/SQ/RQ vs reference (%)", abs(value - reference), tol)


def assert_same_results(results, expected, tol=pq_tolerance(100)):
    """Equal up to float summation order (statistics summed per process, then across)."""
    assert list(results) == list(expected)
    for key, value in results["panoptic_seg"].items():
        other = expected["panoptic_seg"][key]
        if not (math.isnan(value) and math.isnan(other)):
            assert within("PQ/SQ/RQ, two runs (%)", abs(value - other), tol), key


def test_results_equal_the_reference_in_detectron2_format(tmp_path):
    images = case_images()
    evaluator = PanopticQualityEvaluator(registered(tmp_path, images))
    results = run(evaluator, images, str(tmp_path))
    assert list(results) == ["panoptic_seg"]
    pq = results["panoptic_seg"]
    groups = [f"{m}{s}" for s in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ")]
    per_class = [f"{m}_{name}" for m in ("PQ", "SQ", "RQ") for name in CLASS_NAMES]
    assert list(pq) == groups + per_class
    assert_results_match(pq, reference_pq(str(tmp_path / "reference"), images))
    assert 0 < pq["PQ"] < 100


def test_results_equal_detectron2s_own_coco_panoptic_evaluator(tmp_path):
    """Detectron2's COCOPanopticEvaluator, unchanged (it encodes the predictions to PNG and calls
    panopticapi's pq_compute), on the plugin's dataset and model outputs."""
    images = case_images(6, seed=5)
    name = registered(tmp_path, images)
    ours = run(PanopticQualityEvaluator(name), images, str(tmp_path))["panoptic_seg"]
    theirs = run(COCOPanopticEvaluator(name), images, str(tmp_path))["panoptic_seg"]
    for key in [f"{m}{s}" for s in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ")]:
        difference = abs(ours[key] - theirs[key])
        assert within("PQ/SQ/RQ vs Detectron2's (%)", difference, pq_tolerance(100)), key


def test_detectron2_visualizer_draws_the_plugins_panoptic_records(tmp_path):
    """Visualizer.draw_dataset_dict reads a record's panoptic PNG through panopticapi's rgb2id:
    every segment is drawn (its pixels change), void is left as it is."""
    image = case_images(1, seed=7)[0]
    name = registered(tmp_path, [image])
    record = DatasetCatalog.get(name)[0]
    background = np.full(image.gt_ids.shape + (3,), 128, dtype=np.uint8)
    drawn = Visualizer(background, MetadataCatalog.get(name), scale=1.0)
    drawn = drawn.draw_dataset_dict(record).get_image()
    changed = (drawn != background).any(axis=2)
    for info in record["segments_info"]:
        assert changed[image.gt_ids == info["id"]].mean() > 0.5, info
    void = image.gt_ids == 0
    if void.any():
        assert changed[void].mean() < changed[~void].mean()


def test_results_do_not_depend_on_threads_or_batches(tmp_path):
    images = case_images(16, seed=3)
    name = registered(tmp_path, images)
    one = run(PanopticQualityEvaluator(name, num_threads=1), images, str(tmp_path), 1)
    three = run(PanopticQualityEvaluator(name, num_threads=3), images, str(tmp_path), 5)
    assert_same_results(three, one, tol=0)


def test_rgba_ground_truth_pngs_give_the_rgb_results(tmp_path):
    """The alpha channel of a GT PNG is ignored (the evaluator reads the PNG as RGBA)."""
    images = case_images(6, seed=5)
    name = registered(tmp_path, images)
    rgb = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    rng = np.random.default_rng(0)
    for image in images:
        png = tmp_path / "gt" / f"{image.image_id}.png"
        pixels = np.asarray(Image.open(png).convert("RGB"))
        alpha = rng.integers(0, 256, size=pixels.shape[:2], dtype=np.uint8)
        Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(png)
        assert Image.open(png).mode == "RGBA"
        assert evaluator_module.read_panoptic_id_map(str(png)).numpy().tolist() == (
            image.gt_ids.tolist()
        )
    assert_same_results(run(PanopticQualityEvaluator(name), images, str(tmp_path)), rgb, tol=0)


def test_ground_truth_decoded_by_opencv_gives_the_same_results(tmp_path, monkeypatch):
    """Interlaced GT PNGs are decoded by OpenCV, and so is every GT PNG with the plugin's own PNG
    reader switched off: the results are the same."""
    images = case_images(6, seed=7)
    name = registered(tmp_path, images)
    own_reader = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    png = tmp_path / "gt" / f"{images[0].image_id}.png"
    png.write_bytes(encode_png(id2rgb(images[0].gt_ids), interlace=True))
    assert read_filtered_png(png.read_bytes(), str(png)) is None
    assert evaluator_module.read_panoptic_id_map(str(png)).numpy().tolist() == (
        images[0].gt_ids.tolist()
    )
    interlaced = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    assert_same_results(interlaced, own_reader, tol=0)
    monkeypatch.setattr(evaluator_module, "read_filtered_png", lambda data, path: None)
    opencv = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    assert_same_results(opencv, own_reader, tol=0)


def test_evaluator_can_be_reused_after_reset(tmp_path):
    images = case_images(4)
    evaluator = PanopticQualityEvaluator(registered(tmp_path, images))
    first = run(evaluator, images, str(tmp_path))
    assert_same_results(run(evaluator, images, str(tmp_path)), first, tol=0)


def test_images_without_segments_are_fine(tmp_path):
    empty = np.zeros((6, 7), dtype=np.int64)
    only_pred = empty.copy()
    only_pred[:3] = 2
    images = [
        PanopticImage(0, empty, [], empty, []),
        PanopticImage(1, empty, [], only_pred, [segment(2, NUM_THINGS)]),  # on void: ignored
    ]
    pq = run(PanopticQualityEvaluator(registered(tmp_path, images)), images, str(tmp_path))
    assert all(math.isnan(value) for value in pq["panoptic_seg"].values())


def test_missing_predictions_are_named_at_evaluate(tmp_path):
    images = case_images(5)
    evaluator = PanopticQualityEvaluator(registered(tmp_path, images))
    evaluator.reset()
    for image in images[:2]:
        evaluator.process([model_input(image, str(tmp_path))], [model_output(image)])
    with pytest.raises(
        PanopticPredictionError, match=re.escape("3 of 5 images: image_id [2, 3, 4]")
    ):
        evaluator.evaluate()


def test_unknown_and_repeated_image_ids_are_rejected_at_once(tmp_path):
    images = case_images(2)
    name = registered(tmp_path, images)
    evaluator = PanopticQualityEvaluator(name)
    stranger = PanopticImage(99, images[0].gt_ids, [], images[0].pred_ids, [])
    with pytest.raises(
        PanopticPredictionError, match=f"image_id 99, which is not in dataset {name}"
    ):
        evaluator.process([model_input(stranger, str(tmp_path))], [model_output(images[0])])
    evaluator.process([model_input(images[0], str(tmp_path))], [model_output(images[0])])
    with pytest.raises(PanopticPredictionError, match="image_id 0 .* processed twice"):
        evaluator.process([model_input(images[0], str(tmp_path))], [model_output(images[0])])


def test_bad_prediction_is_named_and_reset_recovers(tmp_path):
    images = case_images(3)
    evaluator = PanopticQualityEvaluator(registered(tmp_path, images))
    bad = model_output(images[1])
    bad["panoptic_seg"][1].append({"id": 12345, "category_id": 0, "isthing": False})
    evaluator.reset()
    evaluator.process([model_input(images[0], str(tmp_path))], [model_output(images[0])])
    evaluator.process([model_input(images[1], str(tmp_path))], [bad])
    with pytest.raises(PanopticPredictionError, match=r"image_id 1 \(.*1\.jpg\): prediction: "):
        evaluator.evaluate()
    none_info = {"panoptic_seg": (model_output(images[0])["panoptic_seg"][0], None)}
    evaluator.reset()
    evaluator.process([model_input(images[0], str(tmp_path))], [none_info])
    with pytest.raises(PanopticPredictionError, match="image_id 0 .*segments_info is None"):
        evaluator.evaluate()
    assert run(evaluator, images, str(tmp_path))["panoptic_seg"]["PQ"] >= 0


def test_ground_truth_file_problems_name_the_file(tmp_path):
    images = case_images(1)
    evaluator = PanopticQualityEvaluator(registered(tmp_path, images))
    png = tmp_path / "gt" / "0.png"
    inputs, outputs = [model_input(images[0], str(tmp_path))], [model_output(images[0])]
    for content, error, message in [
        (Image.fromarray(id2rgb(images[0].gt_ids[:-1])), PanopticDataError, "its record says"),
        (Image.fromarray(images[0].gt_ids.astype(np.uint8)), PanopticDataError, "1 channel"),
        (None, FileNotFoundError, "does not exist"),
        (b"not a png", PanopticDataError, "Cannot decode"),
        (encode_png(id2rgb(images[0].gt_ids))[:-20], PanopticDataError, "ends inside its IDAT"),
    ]:
        png.unlink(missing_ok=True)
        if isinstance(content, bytes):
            png.write_bytes(content)
        elif content is not None:
            content.save(png)
        evaluator.reset()
        evaluator.process(inputs, outputs)
        with pytest.raises(error, match=f"{re.escape(str(png))}.*{message}|{message}.*{png}"):
            evaluator.evaluate()


def test_threads_default_to_the_usable_cores_and_follow_the_config(tmp_path, monkeypatch):
    name = registered(tmp_path, case_images(2))
    monkeypatch.setattr(evaluator_module.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert PanopticQualityEvaluator(name).num_threads == 3
    assert PanopticQualityEvaluator(name, num_threads=2).num_threads == 2
    cfg = config(name)
    for configured, expected in ((0, 3), (7, 7)):
        cfg.PANOPTIC_FPN_EXT.EVAL.NUM_THREADS = configured
        evaluators = build_panoptic_fpn_evaluators(cfg, name, str(tmp_path))._evaluators
        pq_evaluator = next(e for e in evaluators if isinstance(e, PanopticQualityEvaluator))
        assert pq_evaluator.num_threads == expected


def test_export_without_output_dir_is_refused(tmp_path):
    name = registered(tmp_path, case_images(1))
    with pytest.raises(ValueError, match="need an output_dir"):
        PanopticQualityEvaluator(name, export_formats=["coco"])
    with pytest.raises(ValueError, match="num_threads = -1"):
        PanopticQualityEvaluator(name, num_threads=-1)


@pytest.mark.gpu
def test_predictions_on_the_gpu_give_the_cpu_results(tmp_path):
    images = case_images(6)
    name = registered(tmp_path, images)
    cpu = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    evaluator = PanopticQualityEvaluator(name)
    evaluator.reset()
    for image in images:
        evaluator.process([model_input(image, str(tmp_path))], [model_output(image, "cuda")])
    assert_same_results(evaluator.evaluate(), cpu, tol=0)


# --- distributed evaluation ----------------------------------------------------------------


class FakeComm:
    """The calls of detectron2.utils.comm that evaluate() makes, for one rank of two whose
    gathered data is given."""

    def __init__(self, rank, others):
        self.rank, self.others, self.sent = rank, others, None

    def synchronize(self):
        pass

    def gather(self, data, dst=0):
        self.sent = data
        return [data] + self.others if self.rank == dst else []

    def is_main_process(self):
        return self.rank == 0


def test_distributed_evaluation_sums_the_statistics_of_all_processes(tmp_path, monkeypatch):
    images = case_images(10, seed=5)
    name = registered(tmp_path, images)
    expected = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    worker = FakeComm(rank=1, others=[])
    monkeypatch.setattr(evaluator_module, "comm", worker)
    assert run(PanopticQualityEvaluator(name), images[1::2], str(tmp_path)) is None
    statistics, image_ids, exported, error = worker.sent
    assert image_ids == [1, 3, 5, 7, 9] and statistics.tp.shape == (len(CATEGORIES),)
    assert exported == [] and error is None
    monkeypatch.setattr(evaluator_module, "comm", FakeComm(rank=0, others=[worker.sent]))
    assert_same_results(run(PanopticQualityEvaluator(name), images[0::2], str(tmp_path)), expected)
    monkeypatch.setattr(evaluator_module, "comm", FakeComm(rank=0, others=[worker.sent]))
    with pytest.raises(
        PanopticPredictionError, match=r"image_id\(s\) \[1\] .*more than one process"
    ):
        run(PanopticQualityEvaluator(name), images[:3:2] + images[1:2], str(tmp_path))


def test_an_error_in_one_process_is_raised_by_the_main_process(tmp_path, monkeypatch):
    images = case_images(4)
    name = registered(tmp_path, images)
    worker = FakeComm(rank=1, others=[])
    monkeypatch.setattr(evaluator_module, "comm", worker)
    bad = model_output(images[1])
    bad["panoptic_seg"][1].append({"id": 77, "category_id": 99, "isthing": True})
    evaluator = PanopticQualityEvaluator(name)
    evaluator.process([model_input(images[1], str(tmp_path))], [bad])
    with pytest.raises(PanopticPredictionError, match="image_id 1 .*77: thing 99"):
        evaluator.evaluate()
    assert isinstance(worker.sent[3], PanopticPredictionError)
    monkeypatch.setattr(evaluator_module, "comm", FakeComm(rank=0, others=[worker.sent]))
    with pytest.raises(PanopticPredictionError, match="image_id 1 .*77: thing 99"):
        run(PanopticQualityEvaluator(name), images[0::2], str(tmp_path))


def _distributed_worker(rank, init_file, root, name, images, results_file):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    register_coco_panoptic_dataset(
        name, os.path.join(root, "images"), os.path.join(root, "gt"), os.path.join(root, "gt.json")
    )
    results = run(PanopticQualityEvaluator(name), images[rank::2], root)
    if rank == 0:
        torch.save(results, results_file)
    torch.distributed.barrier()  # both done communicating before gloo is torn down
    torch.distributed.destroy_process_group()
    # Skip the interpreter's teardown: there, a C++ thread of the torch/OpenCV stack now and then
    # aborts the process ("terminate called without an active exception"), after the work is done.
    os._exit(0)


def test_two_gloo_processes_give_the_single_process_results(tmp_path):
    images = case_images(8, seed=7)
    name = registered(tmp_path, images)
    expected = run(PanopticQualityEvaluator(name), images, str(tmp_path))
    results_file = tmp_path / "results.pth"
    torch.multiprocessing.spawn(
        _distributed_worker,
        args=(str(tmp_path / "init"), str(tmp_path), name, images, str(results_file)),
        nprocs=2,
    )
    assert_same_results(torch.load(results_file), expected)


# --- the evaluators of train_net.py --------------------------------------------------------


def config(dataset, **eval_keys):
    """A config whose class counts fit ``dataset`` (the evaluator builders check them)."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.MODEL.MASK_ON = True
    metadata = MetadataCatalog.get(dataset)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(metadata.thing_classes)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(metadata.stuff_classes)  # stuff + "things"
    for key, value in eval_keys.items():
        cfg.PANOPTIC_FPN_EXT.EVAL[key] = value
    return cfg


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    """A 3-image shapes split with instances JSON, registered."""
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, "val", 3, (48, 64))
    paths = shapes_paths(root, "val")
    name = "test_pq_evaluator_shapes_val"
    register_coco_panoptic_dataset(
        name,
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        paths["instances_json"],
    )
    return name


def kinds(evaluators):
    return [type(e) for e in evaluators._evaluators]


def test_build_gives_pq_instance_ap_and_miou(shapes_dataset, tmp_path):
    cfg = config(shapes_dataset)
    evaluators = build_panoptic_fpn_evaluators(cfg, shapes_dataset, str(tmp_path))
    assert kinds(evaluators) == [PanopticQualityEvaluator, COCOEvaluator, SemSegEvaluator]
    assert evaluators._evaluators[1]._tasks == ("bbox", "segm")
    only_pq = config(shapes_dataset, INSTANCE_AP=False, SEMANTIC_MIOU=False)
    assert kinds(build_panoptic_fpn_evaluators(only_pq, shapes_dataset, str(tmp_path))) == [
        PanopticQualityEvaluator
    ]


def test_build_skips_instance_ap_without_instances_json(tmp_path):
    name = registered(tmp_path, case_images(2))
    evaluators = build_panoptic_fpn_evaluators(config(name), name, str(tmp_path))
    assert kinds(evaluators) == [PanopticQualityEvaluator, SemSegEvaluator]


def test_build_for_a_semantic_only_model_evaluates_all_classes(tmp_path):
    name = registered(tmp_path, case_images(2))
    cfg = config(name)
    cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET = "all_classes"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES += len(METADATA["thing_classes"]) - 1  # stuff + things
    evaluators = build_panoptic_fpn_evaluators(cfg, name, str(tmp_path))
    assert kinds(evaluators) == [SemSegEvaluator]
    semantic = evaluators._evaluators[0]
    stuff = METADATA["stuff_classes"][1:]
    assert semantic._class_names == stuff + METADATA["thing_classes"]


def expected_semantic(image: PanopticImage, all_classes: bool) -> np.ndarray:
    labels = np.full(image.gt_ids.shape, 255)
    for seg in image.gt_segments:
        if all_classes:
            num_stuff = len(METADATA["stuff_classes"]) - 1
            label = num_stuff + seg["category_id"] if seg["isthing"] else seg["category_id"] - 1
        else:
            label = 0 if seg["isthing"] else seg["category_id"]
        labels[image.gt_ids == seg["id"]] = label
    return labels


@pytest.mark.parametrize("all_classes", [False, True])
def test_semantic_labels_are_derived_from_the_panoptic_png(tmp_path, all_classes):
    images = case_images(3)
    name = registered(tmp_path, images)
    loader = SemanticFromPanoptic(
        name, 255, len(METADATA["stuff_classes"]) - 1 if all_classes else 0
    )
    for image in images:
        labels = loader(str(tmp_path / "gt" / f"{image.image_id}.png"), dtype=np.int32)
        assert labels.dtype == np.int32
        assert (labels == expected_semantic(image, all_classes)).all()


def test_semantic_evaluator_scores_perfect_predictions_100(tmp_path):
    images = case_images(3)
    name = registered(tmp_path, images)
    cfg = config(name)
    semantic = build_panoptic_fpn_evaluators(cfg, name, str(tmp_path))._evaluators[-1]
    num_classes = len(MetadataCatalog.get(name).stuff_classes)
    semantic.reset()
    for image in images:
        labels = torch.as_tensor(expected_semantic(image, False))
        logits = torch.nn.functional.one_hot(labels.clamp(max=num_classes - 1), num_classes)
        semantic.process(
            [model_input(image, str(tmp_path))], [{"sem_seg": logits.permute(2, 0, 1).float()}]
        )
    assert semantic.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100)


def test_build_evaluator_refuses_a_dataset_of_another_evaluator_type(shapes_dataset, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from panoptic_fpn_ext import build_evaluator

    assert kinds(build_evaluator(config(shapes_dataset), shapes_dataset, str(tmp_path)))[0] is (
        PanopticQualityEvaluator
    )
    name = "test_build_evaluator_coco_type"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(evaluator_type="coco")
    with pytest.raises(ValueError, match=f"Dataset '{name}' has evaluator_type 'coco'"):
        build_evaluator(config(shapes_dataset), name, str(tmp_path))
