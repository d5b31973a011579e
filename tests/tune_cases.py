"""Small inputs for the tune tool's tests: a few images of the bundled shapes dataset, random
weights of the quick-start model saved as a checkpoint, and full evaluation runs to compare with."""

import math
import os
from typing import Dict, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from panoptic_fpn_ext.data import register_coco_panoptic_dataset
from panoptic_fpn_ext.data.synthetic import ensure_shapes_dataset
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer
from panoptic_fpn_ext.evaluation import PanopticQualityEvaluator, PQStatistics
from panoptic_fpn_ext.tools.predict import build_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_start", "panoptic_fpn_ext_R_18_shapes.yaml")
# Small inputs and few detections keep a random-weights model fast on a CPU; random class scores
# are near 1/4, so the confidence thresholds of the tests' grids (0.05 to 0.3) change decisions.
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "40", "TEST.DETECTIONS_PER_IMAGE", "12",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def make_dataset(root: str, name: str, num_images: int = 6, seed: int = 3) -> str:
    """Register ``name``: ``num_images`` shapes images of 64x64 under ``root`` (generated once,
    so that files already there keep their modification times)."""
    paths = ensure_shapes_dataset(root, "val", num_images, (64, 64), seed=seed)
    if name not in DatasetCatalog.list():
        register_coco_panoptic_dataset(
            name, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"]
        )
    return name


def make_weights(path: str, seed: int = 0) -> str:
    """Random weights of the quick-start model (a Detectron2 checkpoint at ``path``), made
    less degenerate: small class-score weights (the random network's features are large, and
    its scores would all be 1.0; these spread them over ~0.75-1) and a semantic bias that
    favours stuff labels (random maps then hold stuff segments, some of them true positives)."""
    torch.manual_seed(seed)
    cfg = build_cfg(CONFIG, TINY)
    model = build_model(cfg)
    with torch.no_grad():
        cls_score = model.roi_heads.box_predictor.cls_score.weight
        cls_score.copy_(torch.randn_like(cls_score) * 3e-3)
        model.sem_seg_head.predictor.bias.copy_(torch.tensor([0.0, 3.0, 2.0, 1.0]))
    DetectionCheckpointer(model, save_dir=os.path.dirname(path)).save(
        os.path.splitext(os.path.basename(path))[0]
    )
    return path


def evaluate(
    dataset: str, weights: str, setting: Sequence[float], opts: Sequence[str] = ()
) -> Tuple[Dict[str, float], PQStatistics]:
    """A full evaluation run (network, combiner, PQ evaluator) with the combiner thresholds
    ``setting`` = (confidence, overlap, stuff area): the evaluator's results and statistics."""
    confidence, overlap, area = setting
    cfg = build_cfg(
        CONFIG,
        [*TINY, *opts, "MODEL.WEIGHTS", weights]
        + ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", str(confidence)]
        + ["MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", str(overlap)]
        + ["MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", str(int(area))],
        dataset,
    )
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    evaluator = PanopticQualityEvaluator(dataset, distributed=False, num_threads=1)
    loader = PanopticFPNExtTrainer.build_test_loader(cfg, dataset)
    results = inference_on_dataset(model, loader, evaluator)
    return results["panoptic_seg"], evaluator._statistics


def assert_same_results(actual: Dict[str, float], expected: Dict[str, float], tol=1e-9) -> None:
    """Equal keys, values within ``tol`` (NaN where the other is NaN)."""
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert abs(actual[key] - value) <= tol, (key, actual[key], value)
