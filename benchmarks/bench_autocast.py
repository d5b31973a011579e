"""Mixed-precision inference (``MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST``) vs float32: speed
and PQ.

    python benchmarks/bench_autocast.py [--device cpu|cuda] [--dtype bfloat16|float16]
                                        [--weights output/quick_start/model_final.pth]
                                        [--repeats 5] [--size 800 1333]

Speed: the plugin's R50-FPN 1x COCO panoptic model with its default config, in float32 and with
``INFERENCE_AUTOCAST`` ``--dtype`` (same weights: Detectron2's model randomly initialised and
calibrated as in ``bench_inference.py``, loaded strictly into both), timed as
``model([inputs])`` on one ``--size`` synthetic scene, alternating, with the settings users get
(torch's defaults). How far the autocast outputs are from float32 on that image is reported
(largest semantic logit difference relative to the largest logit; share of pixels whose panoptic
category agrees), not asserted: autocast trades exactness for speed.

Accuracy: the quick-start model (``configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml``) with
the trained weights ``--weights`` (``make demo`` writes the default path) evaluated on the
synthetic validation set ``panoptic_fpn_ext_shapes_val`` by the plugin's PQ evaluator, in float32
and with autocast. The default ``--dtype`` is bfloat16 on CPU and float16 on CUDA.
"""

import argparse
import os
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from torch import nn

from bench_inference import calibrate, category_map, make_image, model_config
from common import (
    alternating_medians,
    command_line,
    machine_description,
    tf32_disabled,
    update_benchmarks_md,
)
from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.data.synthetic import SHAPES_IMAGE_SIZE, SHAPES_SPLIT_SIZES
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer

QUICK_START_CONFIG = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
DEFAULT_WEIGHTS = "output/quick_start/model_final.pth"
PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")


def speed_models(inputs: List[Dict], device: str, dtype: str, seed: int = 0) -> List[nn.Module]:
    """The plugin's R50-FPN in float32 and with ``INFERENCE_AUTOCAST`` ``dtype``, both in eval
    mode on ``device`` with the same calibrated weights (see ``bench_inference.calibrate``)."""
    torch.manual_seed(seed)
    reference = build_model(model_config(plugin=False, device=device))
    calibrate(reference, inputs)
    models = []
    for setting in ("", dtype):
        cfg = model_config(plugin=True, device=device)
        cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = setting
        model = build_model(cfg)
        model.load_state_dict(reference.state_dict(), strict=True)
        models.append(model.eval())
    return models


@torch.no_grad()
def output_difference(fp32: nn.Module, autocast: nn.Module, inputs: List[Dict]) -> Dict:
    """How far ``autocast``'s outputs are from ``fp32``'s on ``inputs`` (float32 reference
    computed with TF32 off): "logit_difference" (largest semantic logit difference / largest
    logit), "pixel_agreement" (share of pixels with the same panoptic category), "detections"
    (float32, autocast)."""
    with tf32_disabled():
        expected = fp32(inputs)[0]
    actual = autocast(inputs)[0]
    scale = float(expected["sem_seg"].abs().max())
    difference = float((expected["sem_seg"] - actual["sem_seg"]).abs().max()) / scale
    same = category_map(expected["panoptic_seg"]) == category_map(actual["panoptic_seg"])
    return {
        "logit_difference": difference,
        "pixel_agreement": float(same.double().mean()),
        "detections": (len(expected["instances"]), len(actual["instances"])),
    }


@torch.no_grad()
def measure_speed(models: List[nn.Module], inputs: List[Dict], repeats: int) -> Dict:
    """:func:`output_difference`, then median seconds per ``model(inputs)`` of the float32 and
    the autocast model ("fp32", "autocast"), alternating, after one warm-up round."""
    result = output_difference(*models, inputs)
    result["fp32"], result["autocast"] = alternating_medians(
        [lambda m=m: m(inputs) for m in models], repeats
    )
    return result


def quick_start_config(device: str, weights: str, autocast: str) -> CfgNode:
    """The quick-start config on ``device`` with ``weights`` and ``INFERENCE_AUTOCAST``
    ``autocast``; only the PQ evaluator (no box/mask AP, no mIoU)."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, QUICK_START_CONFIG)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = autocast
    cfg.PANOPTIC_FPN_EXT.EVAL.INSTANCE_AP = False
    cfg.PANOPTIC_FPN_EXT.EVAL.SEMANTIC_MIOU = False
    return cfg


def evaluate_pq(device: str, weights: str, autocast: str) -> Dict[str, float]:
    """PQ, SQ, RQ (all, things, stuff; in percent) of the quick-start model with ``weights`` on
    the first dataset of its ``DATASETS.TEST`` (the shapes validation set)."""
    cfg = quick_start_config(device, weights, autocast)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    results = PanopticFPNExtTrainer.test(cfg, model)
    return {key: results["panoptic_seg"][key] for key in PQ_KEYS}


def check_weights(path: str) -> None:
    """SystemExit naming ``path`` unless it is a file."""
    if not os.path.isfile(path):
        raise SystemExit(
            f"--weights {path}: no such file. Train the quick-start model first (`make demo` "
            f"writes {DEFAULT_WEIGHTS}), or pass the path of a trained quick-start checkpoint."
        )


def report(args: argparse.Namespace, speed: Dict, pq: Dict[str, Dict[str, float]]) -> None:
    """Print the result and write the ``autocast-{device}`` block of BENCHMARKS.md."""
    ratio = speed["autocast"] / speed["fp32"]
    height, width = args.size
    height_q, width_q = SHAPES_IMAGE_SIZE
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{values[k]:.2f}" for k in PQ_KEYS) + " |"
        for name, values in (("float32", pq["fp32"]), (args.dtype, pq["autocast"]))
    )
    delta = pq["autocast"]["PQ"] - pq["fp32"]["PQ"]
    summary = (
        f"{args.dtype} autocast: {ratio:.3f}x float32's inference time; PQ {delta:+.2f} points "
        f"({pq['fp32']['PQ']:.2f} -> {pq['autocast']['PQ']:.2f})"
    )
    print(summary, flush=True)
    update_benchmarks_md(
        f"autocast-{args.device}",
        f"## Mixed-precision inference (`INFERENCE_AUTOCAST {args.dtype}`), {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}.\n\n"
        f"Speed: the plugin's R50-FPN 1x with its default config, one {height}x{width} "
        f"synthetic scene, batch of 1, median of {args.repeats} rounds alternating: float32 "
        f"{speed['fp32'] * 1e3:.0f} ms, {args.dtype} autocast {speed['autocast'] * 1e3:.0f} ms "
        f"(**{ratio:.3f}x**). Its outputs against float32's (TF32 off) on that image: semantic "
        f"logits within {speed['logit_difference']:.1e} of the largest logit, panoptic "
        f"categories equal on {speed['pixel_agreement']:.3%} of the pixels, "
        f"{speed['detections'][0]} and {speed['detections'][1]} detections.\n\n"
        f"Accuracy: the quick-start model (`{args.weights}`) on `panoptic_fpn_ext_shapes_val` "
        f"({SHAPES_SPLIT_SIZES['val']} images of {height_q}x{width_q}), PQ evaluator:\n\n"
        "| precision | PQ | SQ | RQ | PQ things | PQ stuff |\n|---|---|---|---|---|---|\n"
        f"{rows}\n\n{summary}.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16"])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cpu" else "float16"
    check_weights(args.weights)
    pq = {
        name: evaluate_pq(args.device, args.weights, setting)
        for name, setting in (("fp32", ""), ("autocast", args.dtype))
    }
    inputs = [{"image": make_image(*args.size, seed=args.seed).to(args.device)}]
    models = speed_models(inputs, args.device, args.dtype, args.seed)
    speed = measure_speed(models, inputs, args.repeats)
    report(args, speed, pq)


if __name__ == "__main__":
    main()
