"""End-to-end inference latency: PanopticFPNExt vs Detectron2's PanopticFPN, same R50-FPN weights.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--repeats 5] [--size 800 1333]
                                         [--profile]

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
postprocessing (semantic resize + labels, mask pasting, the panoptic combiner). The plugin runs
twice: with its default config (``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT "auto"``: channels-last
on CPU, contiguous on CUDA) and with the other layout set explicitly, so that both layouts and
the default are timed. The postprocessing alone is also timed on the same raw outputs. Outputs
are checked first, with TF32 off on a GPU (``common.tf32_disabled``): identical to Detectron2's
(panoptic maps, segments_info, semantic logits, instances) in the contiguous layout, equal up to
float rounding in channels-last (see :func:`check_equivalent`). Timings are taken with the
settings users get (torch's defaults: TF32 cuDNN convolutions on a GPU), named in the block.
``--profile`` also prints each model's time per module (backbone, RPN, RoI heads, semantic head)
and the two semantic-label reductions.
"""

import argparse
import os
import statistics
import sys
import time
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

from common import (
    alternating_medians,
    command_line,
    machine_description,
    median_seconds,
    synchronize,
    tf32_disabled,
    update_benchmarks_md,
)
from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from float_reference import (  # noqa: E402  (tests/ is put on the path above)
    FACTOR,
    assert_within_reference,
    inference_outputs,
    to_float64,
)
from panoptic_fpn_ext.data.synthetic import random_shapes_scene
from panoptic_fpn_ext.modeling import PanopticFPNExt  # noqa: F401 (registers the meta-arch)
from panoptic_fpn_ext.modeling.device_settings import resolve_memory_format

REFERENCE_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
PLUGIN_CONFIG = "configs/COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"
# Standard deviation given to the box classifier's and the mask predictor's logits by
# calibrate(): a randomly initialised head predicts near-uniform class scores (~1/81, below the
# 0.05 test threshold) and 0.5 mask probabilities; with these spreads about as many detections
# reach the combiner as with a trained model (tens of the 100 per image score >= 0.5).
CLASS_LOGIT_STD = 2.5
MASK_LOGIT_STD = 4.0


def model_config(plugin: bool, device: str, memory_format: str = "auto") -> CfgNode:
    """The R50-FPN 1x COCO panoptic config: the plugin's (with ``MEMORY_FORMAT``
    ``memory_format``), or Detectron2's model-zoo one."""
    cfg = get_cfg()
    if plugin:
        add_panoptic_fpn_ext_config(cfg)
        merge_config_file(cfg, PLUGIN_CONFIG)
        cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = memory_format
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


def layout_name(model: nn.Module) -> str:
    """The MEMORY_FORMAT value that gives ``model``'s layout: "channels_last" or "contiguous"."""
    is_channels_last = model.applied_memory_format == torch.channels_last
    return "channels_last" if is_channels_last else "contiguous"


def other_layout(device: str, training: bool = False) -> str:
    """The explicit MEMORY_FORMAT that "auto" does not pick on ``device`` (in training or in
    inference)."""
    auto = resolve_memory_format("auto", device, training)
    return "contiguous" if auto == torch.channels_last else "channels_last"


def build_models(
    inputs: List[Dict], device: str = "cpu", seed: int = 0
) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """Detectron2's PanopticFPN (random init with ``seed``, calibrated on ``inputs``), and
    PanopticFPNExt with its state_dict loaded strictly: with its default config (MEMORY_FORMAT
    "auto"), and with the layout that "auto" does not pick on ``device``
    (:func:`other_layout`). All three in eval mode on ``device``."""
    torch.manual_seed(seed)
    reference = build_model(model_config(plugin=False, device=device))
    calibrate(reference, inputs)
    plugins = []
    for memory_format in ("auto", other_layout(device)):
        plugin = build_model(model_config(True, device, memory_format))
        plugin.load_state_dict(reference.state_dict(), strict=True)
        plugins.append(plugin.eval())
    return (reference.eval(), *plugins)


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


def category_map(panoptic_seg: Tuple[torch.Tensor, List[Dict]]) -> torch.Tensor:
    """int64 (H, W), on the panoptic map's device: 0 on void, else 1 + category id (+ 1000 for
    things). Segment ids follow the score order, which near-equal scores may change; the
    categories of the pixels do not."""
    id_map, segments = panoptic_seg
    table = torch.zeros(int(id_map.max()) + 1, dtype=torch.int64)
    for s in segments:
        table[s["id"]] = 1 + s["category_id"] + 1000 * s["isthing"]
    return table.to(id_map.device)[id_map.long()]


def check_equivalent(
    reference: nn.Module, plugin: nn.Module, inputs: List[Dict], expected: List[Dict]
) -> Dict[str, float]:
    """Raise AssertionError unless ``plugin`` computes ``reference``'s outputs up to float
    rounding, judged against float64 (tests/float_reference.py): with the reference's proposals
    and detections replayed (top-k and NMS are discrete), the plugin's semantic logits, box-head
    outputs and mask probabilities have errors within ``FACTOR`` x the reference's own float32
    errors. ``expected`` is ``reference(inputs)``.

    Returns the largest of those error ratios ("error_ratio"), the plugin's largest semantic logit
    error relative to the largest logit ("logit_difference"), and the smallest share of pixels
    whose panoptic category agrees end to end ("pixel_agreement": reported, not checked, since a
    detection whose score or rank sits on a rounding boundary can come out differently).
    """
    reference64 = to_float64(reference)
    exact, actual, exact64 = inference_outputs([reference, plugin, reference64], inputs)
    del reference64
    worst = {"error_ratio": 0.0, "pixel_agreement": 1.0}
    for quantity in exact:
        checked = assert_within_reference(
            quantity, actual[quantity], exact[quantity], exact64[quantity]
        )
        worst["error_ratio"] = max(worst["error_ratio"], checked.ratio)
        if quantity == "semantic logits":
            worst["logit_difference"] = checked.variant_error / checked.scale
    for a, b in zip(expected, plugin(inputs)):
        same = category_map(a["panoptic_seg"]) == category_map(b["panoptic_seg"])
        worst["pixel_agreement"] = min(worst["pixel_agreement"], float(same.double().mean()))
    return worst


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


def check_outputs(
    reference: nn.Module, plugins: Tuple[nn.Module, nn.Module], inputs: List[Dict]
) -> Dict[str, float]:
    """With TF32 off: the plugin in the contiguous layout gives outputs identical to Detectron2's
    (end to end, and its postprocessing on Detectron2's raw outputs; :func:`check_identical`),
    in channels-last equal up to float rounding (:func:`check_equivalent`).

    Returns:
        :func:`instance_counts` of the first image and the :func:`check_equivalent` figures.
    """
    with tf32_disabled():
        expected = reference(inputs)
        raw = reference.inference(inputs, do_postprocess=False)
        check_identical(expected, reference_postprocess(reference, raw, inputs))
        result: Dict[str, float] = dict(instance_counts(reference, expected[0]))
        for plugin in plugins:
            if layout_name(plugin) == "contiguous":
                check_identical(expected, plugin(inputs))
                check_identical(expected, plugin_postprocess(plugin, raw, inputs))
            else:
                result.update(check_equivalent(reference, plugin, inputs, expected))
    return result


@torch.no_grad()
def measure(
    reference: nn.Module,
    plugin: nn.Module,
    other: nn.Module,
    inputs: List[Dict],
    repeats: int,
    warmup: int = 1,
) -> Dict[str, float]:
    """Check the outputs (:func:`check_outputs`; ``plugin`` has the default config, ``other``
    the other memory layout), then time the three models with the current (default) settings.

    Returns:
        median seconds per call (``repeats`` rounds after ``warmup``, the models alternating
        within each round): "reference", "plugin", "other" (``model(inputs)``),
        "reference_post" and "plugin_post" (their postprocessing on the same raw outputs);
        "plugin_layout" and "other_layout" (:func:`layout_name`); "logit_difference" and
        "pixel_agreement" from :func:`check_equivalent`; and the :func:`instance_counts` of the
        first image.
    """
    result = check_outputs(reference, (plugin, other), inputs)
    result["plugin_layout"], result["other_layout"] = layout_name(plugin), layout_name(other)
    result["reference"], result["plugin"], result["other"] = alternating_medians(
        [lambda: reference(inputs), lambda: plugin(inputs), lambda: other(inputs)],
        repeats,
        warmup,
    )
    raw = reference.inference(inputs, do_postprocess=False)
    result["reference_post"], result["plugin_post"] = alternating_medians(
        [
            lambda: reference_postprocess(reference, raw, inputs),
            lambda: plugin_postprocess(plugin, raw, inputs),
        ],
        repeats,
        warmup,
    )
    return result


def report(args: argparse.Namespace, r: Dict[str, float]) -> None:
    """Print the result and write the ``inference-{device}`` block of BENCHMARKS.md."""
    ratio, other_ratio = r["plugin"] / r["reference"], r["other"] / r["reference"]
    post_ratio = r["plugin_post"] / r["reference_post"]
    default = f"plugin's default config (`auto`: {r['plugin_layout']})"
    other = f"plugin with `MEMORY_FORMAT {r['other_layout']}`"
    print(
        f"Detectron2 {r['reference'] * 1e3:.0f} ms | {default} {r['plugin'] * 1e3:.0f} ms "
        f"({ratio:.3f}x) | {other} {r['other'] * 1e3:.0f} ms ({other_ratio:.3f}x) | "
        f"postprocessing: Detectron2 {r['reference_post'] * 1e3:.1f} ms, "
        f"plugin {r['plugin_post'] * 1e3:.1f} ms ({post_ratio:.3f}x) | {r['detections']} "
        f"detections, {r['considered']} considered by the combiner, {r['things']} thing + "
        f"{r['stuff']} stuff segments | channels-last: errors against float64 at most "
        f"{r['error_ratio']:.2f}x Detectron2's, logits within {r['logit_difference']:.1e} "
        f"(relative), panoptic categories agree on {r['pixel_agreement']:.4%} of pixels",
        flush=True,
    )
    height, width = args.size
    verdict = "met" if ratio <= 0.9 else "missed"
    update_benchmarks_md(
        f"inference-{args.device}",
        f"## End-to-end inference, R50-FPN, {height}x{width}, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; batch of 1; median of "
        f"{args.repeats} rounds, the models alternating. Target: plugin at most 0.9x "
        "Detectron2's time. Same weights: Detectron2's PanopticFPN from its R50-FPN 1x config, "
        f"randomly initialised (seed {args.seed}) and calibrated on the image (FrozenBN "
        "statistics set from the data, classifier and mask logits scaled), loaded strictly into "
        'the plugin. Default test thresholds. Input: one synthetic "shapes" scene; outputs at '
        f"the input size. The image gives {r['detections']} detections, of which "
        f"{r['considered']} score at least {r['threshold']:g} and reach the combiner's "
        f"placement loop; the panoptic map has {r['things']} thing and {r['stuff']} stuff "
        "segments.\n\n"
        "Outputs checked (with TF32 off on a GPU): in the contiguous layout identical to "
        "Detectron2's (panoptic map, segments_info, semantic logits, instances); in "
        "channels-last equal up to float rounding, judged against a float64 run of Detectron2's "
        "model with its proposals and detections replayed (tests/float_reference.py): semantic "
        "logits, box-head outputs and mask probabilities with errors at most "
        f"{r['error_ratio']:.2f}x Detectron2's float32 errors (bound {FACTOR:g}x); semantic "
        f"logits within {r['logit_difference']:.1e} of the largest logit; end to end, panoptic "
        f"categories equal on {r['pixel_agreement']:.4%} of the pixels.\n\n"
        "| part | Detectron2 (ms) | plugin (ms) | plugin / Detectron2 |\n|---|---|---|---|\n"
        f"| `model([inputs])`, end to end, {default} | "
        f"{r['reference'] * 1e3:.0f} | {r['plugin'] * 1e3:.0f} | {ratio:.3f}x |\n"
        f"| `model([inputs])`, end to end, {other} | "
        f"{r['reference'] * 1e3:.0f} | {r['other'] * 1e3:.0f} | {other_ratio:.3f}x |\n"
        f"| postprocessing alone (semantic resize and labels, mask paste, combiner) | "
        f"{r['reference_post'] * 1e3:.1f} | {r['plugin_post'] * 1e3:.1f} | {post_ratio:.3f}x |\n\n"
        f"End to end with the default config: **{ratio:.3f}x** (target {verdict}).",
    )


# The modules of a Panoptic FPN that --profile times one by one.
STAGES = ("backbone", "proposal_generator", "roi_heads", "sem_seg_head")


def _stage_hooks(model: nn.Module, seconds: Dict[str, List[float]]) -> List:
    """Hooks appending each :data:`STAGES` module's wall time per call to ``seconds[stage]``."""
    handles, starts = [], {}

    def start(stage: str) -> Callable:
        def hook(module: nn.Module, args: Tuple) -> None:
            synchronize()
            starts[stage] = time.perf_counter()

        return hook

    def stop(stage: str) -> Callable:
        def hook(module: nn.Module, args: Tuple, output: object) -> None:
            synchronize()
            seconds[stage].append(time.perf_counter() - starts[stage])

        return hook

    for stage in STAGES:
        module = getattr(model, stage)
        handles.append(module.register_forward_pre_hook(start(stage)))
        handles.append(module.register_forward_hook(stop(stage)))
    return handles


@torch.no_grad()
def profile(models: Dict[str, nn.Module], inputs: List[Dict], repeats: int) -> Dict[str, Dict]:
    """Median milliseconds of each model's :data:`STAGES` and of the whole call ("total"; the
    rest is preprocessing and postprocessing) over ``repeats`` rounds of
    :func:`alternating_medians` after one warm-up round; plus "semantic labels":
    ``argmax(dim=0)`` vs ``max(dim=0).indices`` on the first model's semantic logits at the
    output size."""
    seconds = {name: {stage: [] for stage in STAGES} for name in models}
    handles = [h for name, m in models.items() for h in _stage_hooks(m, seconds[name])]
    try:
        totals = alternating_medians([lambda m=m: m(inputs) for m in models.values()], repeats)
    finally:
        for handle in handles:
            handle.remove()
    result = {
        name: {
            **{
                stage: 1e3 * statistics.median(values[-repeats:])
                for stage, values in stages.items()
            },
            "total": 1e3 * total,
        }
        for (name, stages), total in zip(seconds.items(), totals)
    }
    logits = next(iter(models.values()))(inputs)[0]["sem_seg"]
    result["semantic labels"] = {
        "argmax(dim=0)": 1e3 * median_seconds(lambda: logits.argmax(dim=0), repeats),
        "max(dim=0).indices": 1e3 * median_seconds(lambda: logits.max(dim=0).indices, repeats),
    }
    return result


def print_profile(result: Dict[str, Dict]) -> None:
    """Print :func:`profile`'s result as one line per model."""
    for name, stages in result.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", action="store_true", help="also time each model's modules one by one"
    )
    args = parser.parse_args()
    image = make_image(*args.size, seed=args.seed)
    inputs = [{"image": image.to(args.device)}]
    models = build_models(inputs, args.device, args.seed)
    report(args, measure(*models, inputs, args.repeats))
    if args.profile:
        names = ("Detectron2", "plugin (auto)", f"plugin, {layout_name(models[2])}")
        print_profile(profile(dict(zip(names, models)), inputs, args.repeats))


if __name__ == "__main__":
    main()
