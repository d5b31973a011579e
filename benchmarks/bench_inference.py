"""End-to-end inference latency: PanopticFPNExt vs Detectron2's PanopticFPN, same R50-FPN weights.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--repeats 5] [--size 800 1333]

Both models are built from their COCO panoptic R50-FPN 1x configs (Detectron2's
``COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml`` and the plugin's
``configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml``) with Detectron2's default
test thresholds. No weights are downloaded: Detectron2's model is randomly initialised with a
fixed seed and then calibrated on the benchmark image so that it behaves like a trained one
(see :func:`calibrate`); the plugin loads its state_dict strictly, so the two hold the same
weights.

The input is one 800x1333 synthetic scene (the bundled "shapes" generator: textured sky, ground
and water, a few shapes) as a BGR uint8 tensor, the size Detectron2's test-time resize gives COCO
images; the outputs are asked for at the same size. Each model is timed as ``model([inputs])``
under ``torch.no_grad()``: preprocessing, backbone, RPN, RoI heads, semantic head and the
postprocessing (semantic resize + argmax, mask pasting, the panoptic combiner). The
postprocessing alone is also timed on the same raw outputs. Outputs are checked identical first
(panoptic maps, segments_info, semantic logits, instances).
"""

import argparse
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from torch import nn

from common import command_line, machine_description, median_seconds, update_benchmarks_md
from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.data.synthetic import random_shapes_scene
from panoptic_fpn_ext.modeling import PanopticFPNExt  # noqa: F401 (registers the meta-arch)

REFERENCE_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
PLUGIN_CONFIG = "configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"
# Standard deviation given to the box classifier's and the mask predictor's logits by
# calibrate(): a randomly initialised head predicts near-uniform class scores (~1/81, below the
# 0.05 test threshold) and 0.5 mask probabilities; with these spreads about as many detections
# reach the combiner as with a trained model (tens of the 100 per image score >= 0.5).
CLASS_LOGIT_STD = 2.5
MASK_LOGIT_STD = 4.0


def model_config(plugin: bool, device: str) -> CfgNode:
    """The R50-FPN 1x COCO panoptic config: the plugin's, or Detectron2's model-zoo one."""
    cfg = get_cfg()
    if plugin:
        add_panoptic_fpn_ext_config(cfg)
        merge_config_file(cfg, PLUGIN_CONFIG)
    else:
        cfg.merge_from_file(model_zoo.get_config_file(REFERENCE_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return cfg


def make_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 (3, height, width) BGR image of a random "shapes" scene (Detectron2's input format)."""
    rng = np.random.default_rng(seed)
    rgb, ids, segments = random_shapes_scene(height, width, rng)
    return torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))


def _normalize_frozen_bn(model: nn.Module) -> List[torch.utils.hooks.RemovableHandle]:
    """Hooks that set each FrozenBatchNorm2d's statistics to those of its input, before it runs."""

    def hook(module: FrozenBatchNorm2d, args: Tuple[torch.Tensor]) -> None:
        x = args[0].transpose(0, 1).flatten(1)
        module.running_mean.copy_(x.mean(dim=1))
        module.running_var.copy_(x.var(dim=1) - module.eps)

    return [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]


def _rescale_outputs(layer: nn.Module, target_std: float) -> Callable[[], None]:
    """Records ``layer``'s outputs; the returned function scales its weight and bias so that
    those outputs get standard deviation ``target_std``."""
    outputs = []
    handle = layer.register_forward_hook(lambda m, args, out: outputs.append(out.detach()))

    def apply() -> None:
        handle.remove()
        std = torch.cat([o.flatten() for o in outputs]).std()
        layer.weight.mul_(target_std / std)
        layer.bias.mul_(target_std / std)

    return apply


@torch.no_grad()
def calibrate(model: nn.Module, inputs: List[Dict]) -> None:
    """Make a randomly initialised Panoptic FPN behave like a trained one on ``inputs``.

    Detectron2's ResNet uses FrozenBatchNorm2d initialised to the identity, so random weights give
    activations that grow by orders of magnitude with depth (saturated scores, a handful of
    degenerate proposals). Two deterministic passes over ``inputs`` fix that: the first sets every
    FrozenBatchNorm2d's statistics to those of its input (a data-dependent initialisation, as
    BatchNorm would give), the second scales the box classifier's and the mask predictor's
    logits to ``CLASS_LOGIT_STD`` and ``MASK_LOGIT_STD``. Changes ``model`` in place.
    """
    was_training = model.training
    model.eval()
    handles = _normalize_frozen_bn(model)
    model(inputs)
    for handle in handles:
        handle.remove()
    heads = model.roi_heads
    finish = [
        _rescale_outputs(heads.box_predictor.cls_score, CLASS_LOGIT_STD),
        _rescale_outputs(heads.mask_head.predictor, MASK_LOGIT_STD),
    ]
    model(inputs)
    for apply in finish:
        apply()
    model.train(was_training)


def build_models(
    inputs: List[Dict], device: str = "cpu", seed: int = 0
) -> Tuple[nn.Module, nn.Module]:
    """Detectron2's PanopticFPN (random init with ``seed``, calibrated on ``inputs``) and
    PanopticFPNExt with its state_dict loaded strictly; both in eval mode on ``device``."""
    torch.manual_seed(seed)
    reference = build_model(model_config(plugin=False, device=device))
    calibrate(reference, inputs)
    plugin = build_model(model_config(plugin=True, device=device))
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), plugin.eval()


def reference_postprocess(model: nn.Module, raw: Tuple, inputs: List[Dict]) -> List[Dict]:
    """Detectron2's PanopticFPN.inference postprocessing (its code, verbatim) on raw outputs
    ``model.inference(inputs, do_postprocess=False)``."""
    results = []
    for sem_seg, detector, per_image in zip(raw[1], raw[0], inputs):
        image_size = detector.image_size
        height = per_image.get("height", image_size[0])
        width = per_image.get("width", image_size[1])
        sem_seg_r = sem_seg_postprocess(sem_seg, image_size, height, width)
        detector_r = detector_postprocess(detector, height, width)
        panoptic_r = combine_semantic_and_instance_outputs(
            detector_r,
            sem_seg_r.argmax(dim=0),
            model.combine_overlap_thresh,
            model.combine_stuff_area_thresh,
            model.combine_instances_score_thresh,
        )
        results.append({"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r})
    return results


def plugin_postprocess(model: nn.Module, raw: Tuple, inputs: List[Dict]) -> List[Dict]:
    """PanopticFPNExt.inference postprocessing on the same raw outputs."""
    return [model._postprocess_one(s, d, i) for s, d, i in zip(raw[1], raw[0], inputs)]


def check_identical(expected: List[Dict], actual: List[Dict]) -> None:
    """Raise AssertionError unless the two models' outputs are identical: panoptic maps and
    segments_info, semantic logits, and instances (boxes, scores, classes, pasted masks)."""
    assert len(expected) == len(actual), "different numbers of outputs"
    for a, b in zip(expected, actual):
        (map_a, info_a), (map_b, info_b) = a["panoptic_seg"], b["panoptic_seg"]
        assert torch.equal(map_a, map_b), "panoptic maps differ"
        assert info_a == info_b, "segments_info differ"
        assert torch.equal(a["sem_seg"], b["sem_seg"]), "semantic logits differ"
        fields_a, fields_b = a["instances"].get_fields(), b["instances"].get_fields()
        assert fields_a.keys() == fields_b.keys(), "instance fields differ"
        for name, value in fields_a.items():
            value_a = getattr(value, "tensor", value)
            value_b = getattr(fields_b[name], "tensor", fields_b[name])
            assert torch.equal(value_a, value_b), f"instances.{name} differ"


def instance_counts(model: nn.Module, output: Dict) -> Dict[str, int]:
    """How many detections one image has, how many the combiner considers (score >= its
    threshold), and the thing and stuff segments in its panoptic output."""
    info = output["panoptic_seg"][1]
    scores = output["instances"].scores
    return {
        "detections": len(scores),
        "considered": int((scores >= model.combine_instances_score_thresh).sum()),
        "threshold": model.combine_instances_score_thresh,
        "things": sum(1 for s in info if s["isthing"]),
        "stuff": sum(1 for s in info if not s["isthing"]),
    }


@torch.no_grad()
def measure(
    reference: nn.Module, plugin: nn.Module, inputs: List[Dict], repeats: int, warmup: int = 1
) -> Dict[str, float]:
    """Check the two models' outputs identical on ``inputs``, then time them.

    Returns:
        median seconds per call (``repeats`` runs after ``warmup``): "reference" and "plugin"
        (``model(inputs)``), "reference_post" and "plugin_post" (their postprocessing on the same
        raw outputs); and the :func:`instance_counts` of the first image.
    """
    expected = reference(inputs)
    check_identical(expected, plugin(inputs))
    raw = reference.inference(inputs, do_postprocess=False)
    check_identical(expected, plugin_postprocess(plugin, raw, inputs))
    check_identical(expected, reference_postprocess(reference, raw, inputs))
    result: Dict[str, float] = dict(instance_counts(reference, expected[0]))
    result["reference"] = median_seconds(lambda: reference(inputs), repeats, warmup)
    result["plugin"] = median_seconds(lambda: plugin(inputs), repeats, warmup)
    result["reference_post"] = median_seconds(
        lambda: reference_postprocess(reference, raw, inputs), repeats, warmup
    )
    result["plugin_post"] = median_seconds(
        lambda: plugin_postprocess(plugin, raw, inputs), repeats, warmup
    )
    return result


def report(args: argparse.Namespace, r: Dict[str, float]) -> None:
    """Print the result and write the ``inference-{device}`` block of BENCHMARKS.md."""
    ratio, post_ratio = r["plugin"] / r["reference"], r["plugin_post"] / r["reference_post"]
    print(
        f"Detectron2 {r['reference'] * 1e3:.0f} ms | plugin {r['plugin'] * 1e3:.0f} ms "
        f"({ratio:.3f}x) | postprocessing: Detectron2 {r['reference_post'] * 1e3:.1f} ms, plugin "
        f"{r['plugin_post'] * 1e3:.1f} ms ({post_ratio:.3f}x) | {r['detections']} detections, "
        f"{r['considered']} considered by the combiner, {r['things']} thing + {r['stuff']} stuff "
        "segments",
        flush=True,
    )
    height, width = args.size
    verdict = "met" if ratio <= 0.9 else "missed"
    update_benchmarks_md(
        f"inference-{args.device}",
        f"## End-to-end inference, R50-FPN, {height}x{width}, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; batch of 1; median of "
        f"{args.repeats}; outputs checked identical (panoptic map, segments_info, semantic "
        "logits, instances). Target: plugin at most 0.9x Detectron2's time. Same weights: "
        "Detectron2's PanopticFPN from its R50-FPN 1x config, randomly initialised (seed "
        f"{args.seed}) and calibrated on the image (FrozenBN statistics set from the data, "
        "classifier and mask logits scaled), loaded strictly into the plugin. Default test "
        'thresholds. Input: one synthetic "shapes" scene; outputs at the input size. '
        f"The image gives {r['detections']} detections, of which {r['considered']} score at "
        f"least {r['threshold']:g} and reach the combiner's placement loop; the panoptic map has "
        f"{r['things']} thing and {r['stuff']} stuff segments.\n\n"
        "| part | Detectron2 (ms) | plugin (ms) | plugin / Detectron2 |\n|---|---|---|---|\n"
        f"| `model([inputs])`, end to end | {r['reference'] * 1e3:.0f} | "
        f"{r['plugin'] * 1e3:.0f} | {ratio:.3f}x |\n"
        f"| of which postprocessing (resize, argmax, paste, combine) | "
        f"{r['reference_post'] * 1e3:.1f} | {r['plugin_post'] * 1e3:.1f} | {post_ratio:.3f}x |\n\n"
        f"End to end: **{ratio:.3f}x** (target {verdict}).",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    image = make_image(*args.size, seed=args.seed)
    inputs = [{"image": image.to(args.device)}]
    reference, plugin = build_models(inputs, args.device, args.seed)
    report(args, measure(reference, plugin, inputs, args.repeats))


if __name__ == "__main__":
    main()
