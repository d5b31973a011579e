"""PanopticFPNExt: Detectron2 model-zoo weights load into it, it gives Detectron2's PanopticFPN
outputs, applies the loss weights, and learns on a fixed tiny batch."""

import copy
import os
import sys

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from float_reference import (
    EPS,
    FACTOR,
    TRAINING_DECISIONS,
    DecisionReplay,
    assert_within_reference,
    inference_outputs,
    summation_bound,
    to_float64,
)
from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.modeling import PANOPTIC_COMBINER_REGISTRY, PanopticFPNExt
from panoptic_fpn_ext.registration import register_once

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from common import tf32_disabled  # noqa: E402  (benchmarks/ is put on the path above)

TINY = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
SIZE = 96
LOSS_KEYS = {
    "loss_sem_seg",
    "loss_rpn_cls",
    "loss_rpn_loc",
    "loss_cls",
    "loss_box_reg",
    "loss_mask",
}


def tiny_cfg(builtin: bool = False, memory_format: str = "contiguous"):
    """A small R18 Panoptic FPN; ``builtin`` selects Detectron2's PanopticFPN + SemSegFPNHead.
    The plugin's model has ``MEMORY_FORMAT`` ``memory_format`` (outputs bit-identical to
    Detectron2's need "contiguous")."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, TINY)
    cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = memory_format
    if builtin:
        cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
        cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 16
    return cfg


def batch(seed: int = 0):
    """Two 96x96 images with two instances each and a stuff-and-other semantic target; the
    outputs are asked for at 80x80."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        inst = Instances((SIZE, SIZE))
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
        masks[0, 10:40, 12:50] = True
        masks[1, 50:90, 40:80] = True
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        inst.gt_classes = torch.tensor([0, 2])
        sem = torch.randint(1, 4, (SIZE, SIZE), generator=g)
        sem[masks.any(0)] = 0
        image = torch.randint(0, 255, (3, SIZE, SIZE), generator=g, dtype=torch.uint8)
        out.append({"image": image, "instances": inst, "sem_seg": sem, "height": 80, "width": 80})
    return out


def images_only(inputs):
    return [{k: v for k, v in d.items() if k in ("image", "height", "width")} for d in inputs]


@pytest.fixture(scope="module")
def models():
    """Detectron2's PanopticFPN with random weights, and the plugin's model loaded from them."""
    torch.manual_seed(0)
    theirs = build_model(tiny_cfg(builtin=True))
    ours = build_model(tiny_cfg())
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("variant", ["R_50_1x", "R_50_3x", "R_101_3x"])
def test_model_zoo_weights_load_with_no_missing_or_unexpected_keys(variant):
    zoo = get_cfg()
    zoo.merge_from_file(
        model_zoo.get_config_file(f"COCO-PanopticSegmentation/panoptic_fpn_{variant}.yaml")
    )
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, f"configs/COCO-PanopticSegmentation/panoptic_fpn_ext_{variant}.yaml")
    for c in (zoo, cfg):
        c.MODEL.DEVICE, c.MODEL.WEIGHTS = "cpu", ""
    checkpoint = build_model(zoo).state_dict()
    ours = build_model(cfg)
    assert type(ours).__name__ == "PanopticFPNExt"
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in checkpoint.items()
    }
    result = ours.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.numerics
def test_same_outputs_as_detectron2(models):
    ours, theirs = models
    with torch.no_grad():
        a, b = ours(images_only(batch())), theirs(images_only(batch()))
    for x, y in zip(a, b):
        assert len(x["instances"]) > 0  # not vacuous
        assert x["sem_seg"].shape == (4, 80, 80) and x["instances"].image_size == (80, 80)
        assert torch.equal(x["sem_seg"], y["sem_seg"])
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            u, v = x["instances"].get(field), y["instances"].get(field)
            u, v = (u.tensor, v.tensor) if isinstance(u, Boxes) else (u, v)
            assert torch.equal(u, v), field
        panoptic, segments = x["panoptic_seg"]
        assert panoptic.dtype == torch.int32 and panoptic.shape == (80, 80)
        assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)
        assert torch.equal(panoptic, y["panoptic_seg"][0])
        assert segments == y["panoptic_seg"][1]


def _conv_weights(model):
    return [p for name, p in model.named_parameters() if p.dim() == 4]


@pytest.mark.numerics
def test_channels_last_model_gives_detectron2_outputs_up_to_rounding(models):
    """Judged against float64 (tests/float_reference.py): with the contiguous run's proposals and
    detections replayed in every run (top-k and NMS are discrete), channels-last's semantic
    logits, box-head outputs and mask probabilities have errors within FACTOR x the contiguous
    layout's own. The discrete post-processing after these outputs (resizing, mask pasting, the
    combiner) is the code that ``test_same_outputs_as_detectron2`` checks bit-identical; a
    detection whose score or rank sits on a rounding boundary can come out differently, so the
    end-to-end outputs are not compared value by value."""
    ours, theirs = models
    fast = build_model(tiny_cfg(memory_format="channels_last")).eval()
    fast.load_state_dict(theirs.state_dict(), strict=True)
    weights = _conv_weights(fast)
    assert len(weights) > 20
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # the layout really changed
    inputs = images_only(batch())
    exact, variant, reference = inference_outputs([ours, fast, to_float64(ours)], inputs)
    for quantity in exact:
        assert_within_reference(quantity, variant[quantity], exact[quantity], reference[quantity])
    assert not torch.equal(variant["semantic logits"], exact["semantic logits"])  # other kernels
    assert variant["semantic logits"].is_contiguous()  # NCHW, as in the contiguous layout
    with torch.no_grad():
        fast_out, exact_out = fast(inputs), ours(inputs)
    for x, y in zip(fast_out, exact_out):
        assert len(x["instances"]) > 0 and x["sem_seg"].shape == y["sem_seg"].shape
        assert x["panoptic_seg"][0].shape == y["panoptic_seg"][0].shape


def test_channels_last_weights_are_the_loaded_values(models):
    """A channels-last model's state_dict holds exactly the weights it was given: Detectron2's
    PanopticFPN loaded from it gives outputs identical to the original's."""
    _, theirs = models
    fast = build_model(tiny_cfg(memory_format="channels_last"))
    fast.load_state_dict(theirs.state_dict(), strict=True)
    again = build_model(tiny_cfg(builtin=True)).eval()
    again.load_state_dict(fast.state_dict(), strict=True)
    with torch.no_grad():
        a, b = again(images_only(batch())), theirs(images_only(batch()))
    for x, y in zip(a, b):
        assert torch.equal(x["sem_seg"], y["sem_seg"])
        assert torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0])


@pytest.mark.numerics
def test_channels_last_training_gives_the_same_losses_and_gradients():
    """Judged against float64 (tests/float_reference.py): per loss and per convolution weight's
    gradient, channels-last's error is within FACTOR x the contiguous layout's own error. Every
    run makes the contiguous run's discrete decisions (anchor and RoI sampling, proposals, ReLU
    and max-pool choices; the anchor labels depend on no rounding and must come out equal)."""
    torch.manual_seed(0)
    exact = build_model(tiny_cfg())
    fast = build_model(tiny_cfg(memory_format="channels_last"))
    fast.load_state_dict(exact.state_dict(), strict=True)
    replay = DecisionReplay(TRAINING_DECISIONS, activations=True)
    model64 = to_float64(exact)
    runs = [
        (exact, replay.record(exact)),
        (fast, replay.replay(fast, torch.float32, verify=TRAINING_DECISIONS[:1])),
        (model64, replay.replay(model64, torch.float64)),
    ]
    results = []
    for model, decisions in runs:
        torch.manual_seed(3)  # the same anchor sampling in every run
        with decisions:
            loss_dict = losses(model, batch())
        sum(loss_dict.values()).backward()
        results.append((loss_dict, [p.grad for p in _conv_weights(model)]))
    (exact_losses, exact_grads), (fast_losses, fast_grads), (losses64, grads64) = results
    assert set(fast_losses) == LOSS_KEYS
    terms = averaged_terms(replay)
    for key in sorted(LOSS_KEYS):
        # one number: a floor from the mean of terms[key] non-negative terms (its own rounding)
        floor = summation_bound(terms[key], losses64[key].item())
        fast_loss, exact_loss = fast_losses[key], exact_losses[key]
        assert_within_reference(key, fast_loss, exact_loss, losses64[key], floor=floor)
    names = [name for name, p in fast.named_parameters() if p.dim() == 4]
    for name, fast_grad, exact_grad, grad64 in zip(names, fast_grads, exact_grads, grads64):
        assert_within_reference(f"grad {name}", fast_grad, exact_grad, grad64)


def averaged_terms(replay: DecisionReplay) -> dict:
    """How many non-negative terms each loss of a recorded training step averages: sampled
    anchors (RPN), sampled RoIs (box head), foreground RoIs x 28 x 28 (mask), pixels
    (semantic: every pixel of ``batch()`` is labelled)."""
    ((anchor_labels, _),) = replay.calls["proposal_generator.label_and_sample_anchors"]
    (rois,) = replay.calls["roi_heads.label_and_sample_proposals"]
    anchors = int(sum((labels >= 0).sum() for labels in anchor_labels))
    sampled = sum(len(r) for r in rois)
    foreground = sum(int((r.gt_classes < 3).sum()) for r in rois)  # 3 thing classes
    return {
        "loss_rpn_cls": anchors,
        "loss_rpn_loc": anchors,
        "loss_cls": sampled,
        "loss_box_reg": sampled,
        "loss_mask": foreground * 28 * 28,
        "loss_sem_seg": 2 * SIZE * SIZE,
    }


def test_raw_outputs_without_postprocess(models):
    ours, theirs = models
    with torch.no_grad():
        instances, sem_seg = ours.inference(images_only(batch()), do_postprocess=False)
        ref_instances, ref_sem_seg = theirs.inference(images_only(batch()), do_postprocess=False)
    assert sem_seg.shape == (2, 4, SIZE, SIZE) and torch.equal(sem_seg, ref_sem_seg)
    for x, y in zip(instances, ref_instances):
        assert x.image_size == (SIZE, SIZE)
        assert x.pred_masks.shape[1:] == (1, 28, 28) and torch.equal(x.pred_masks, y.pred_masks)


def test_the_configured_combiner_makes_the_panoptic_output(models):
    @register_once(PANOPTIC_COMBINER_REGISTRY, name="TestLabelsAsSegmentsCombiner")
    class LabelsAsSegments:
        def __init__(self, cfg):
            pass

        def __call__(self, instances, semantic, mask_boxes=None):
            assert mask_boxes.shape == (len(instances), 4)
            return semantic.to(torch.int32) + 1, []

    cfg = tiny_cfg()
    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "TestLabelsAsSegmentsCombiner"
    model = build_model(cfg).eval()
    model.load_state_dict(models[0].state_dict())
    with torch.no_grad():
        outputs = model(images_only(batch()))
    for out in outputs:
        assert out["panoptic_seg"][1] == []
        assert torch.equal(out["panoptic_seg"][0], out["sem_seg"].argmax(dim=0).int() + 1)


def losses(model, inputs):
    model.train()
    with EventStorage():
        return model(inputs)


@pytest.mark.numerics
def test_loss_weights_apply():
    torch.manual_seed(1)
    cfg = tiny_cfg()
    assert (
        cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0.5
        and cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT == 1
    )
    base = build_model(cfg)
    cfg2 = copy.deepcopy(cfg)
    cfg2.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 2.0
    cfg2.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
    scaled = build_model(cfg2)
    scaled.load_state_dict(base.state_dict())
    torch.manual_seed(2)  # the same RoI sampling in both runs
    a = losses(base, batch())
    torch.manual_seed(2)
    b = losses(scaled, batch())
    assert set(a) == set(b) == LOSS_KEYS
    for key in a:
        # lambda_i scales the RoI heads' losses (classification, box, mask), as in the paper;
        # the RPN's are not weighted; lambda_s 0.5 -> 1.0 doubles loss_sem_seg. The rest of
        # the computation is the same, and a power of two scales a float exactly.
        factor = 1.0 if key.startswith("loss_rpn") else 2.0
        assert torch.equal(b[key], factor * a[key]), key


def test_few_sgd_steps_lower_the_total_loss():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = batch()
    totals = []
    for _ in range(8):
        loss_dict = losses(model, inputs)
        assert set(loss_dict) == LOSS_KEYS
        total = sum(loss_dict.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


def _layouts(model):
    """The set of layouts of the model's 4-D weights: "channels_last" and/or "contiguous" (a
    weight whose strides fit both, e.g. of a 1x1 convolution, counts as neither)."""
    layouts = set()
    for weight in _conv_weights(model):
        nchw, nhwc = weight.is_contiguous(), weight.is_contiguous(memory_format=torch.channels_last)
        if nchw != nhwc:
            layouts.add("contiguous" if nchw else "channels_last")
    return layouts


def test_auto_memory_format_on_cpu_is_channels_last_for_inference_only():
    """``auto`` on CPU: contiguous in training (``build_model`` gives a model in training mode),
    channels-last after ``eval()``, contiguous again after ``train()``; the parameters stay the
    objects an optimizer holds, with the same values."""
    model = build_model(tiny_cfg(memory_format="auto"))
    assert model.device.type == "cpu" and model.training
    assert model.applied_memory_format == torch.contiguous_format
    assert _layouts(model) == {"contiguous"}
    parameters = list(model.parameters())
    values = [p.detach().clone() for p in parameters]
    model.eval()
    assert model.applied_memory_format == torch.channels_last
    assert _layouts(model) == {"channels_last"}
    model.train()
    assert _layouts(model) == {"contiguous"}
    assert all(p is q for p, q in zip(model.parameters(), parameters))
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))


def test_memory_format_follows_the_device_the_model_moves_to():
    """``auto`` re-resolves on ``model.to(device)``: on a device other than the CPU (here "meta",
    which holds no data) it is Detectron2's contiguous layout; explicit formats stay."""
    auto = build_model(tiny_cfg(memory_format="auto")).to("meta")
    assert auto.device.type == "meta" and auto.applied_memory_format == torch.contiguous_format
    assert _layouts(auto) == {"contiguous"}
    explicit = build_model(tiny_cfg(memory_format="channels_last")).to("meta")
    assert _layouts(explicit) == {"channels_last"}


def test_direct_construction_has_the_config_default_memory_format():
    defaults = get_cfg()
    add_panoptic_fpn_ext_config(defaults)
    cfg = tiny_cfg(memory_format=defaults.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT)
    from_yaml = build_model(cfg)
    arguments = PanopticFPNExt.from_config(cfg)
    del arguments["memory_format"]
    direct = PanopticFPNExt(**arguments)
    assert direct.memory_format == from_yaml.memory_format == "auto"
    assert _layouts(direct.eval()) == _layouts(from_yaml.eval()) == {"channels_last"}


def test_invalid_memory_format_names_the_argument():
    arguments = PanopticFPNExt.from_config(tiny_cfg())
    arguments["memory_format"] = "nhwc"
    with pytest.raises(ValueError, match="memory_format = 'nhwc'; expected one of"):
        PanopticFPNExt(**arguments)
    cfg = tiny_cfg(memory_format="channels-last")
    with pytest.raises(ValueError, match="MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = 'channels-last'"):
        build_model(cfg)


# Convolutions from the image to the semantic logits on the longest path: ResNet-18's stem 1 and
# res2-res5 16, the FPN's lateral and output 2, the semantic head's 3 at p5 and its predictor 1.
SEMANTIC_DEPTH = 23


def _autocast_model(models, setting):
    cfg = tiny_cfg()
    cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = setting
    model = build_model(cfg).eval()
    model.load_state_dict(models[0].state_dict(), strict=True)
    return model


@pytest.mark.numerics
def test_bfloat16_inference_keeps_the_output_dtypes(models):
    ours, _ = models
    fast = _autocast_model(models, "bfloat16")
    with torch.no_grad():
        outputs, reference = fast(images_only(batch())), ours(images_only(batch()))
        raw_instances, raw_sem_seg = fast.inference(images_only(batch()), do_postprocess=False)
    assert raw_sem_seg.dtype == torch.float32
    for raw in raw_instances:
        assert raw.pred_boxes.tensor.dtype == raw.scores.dtype == torch.float32
        assert raw.pred_masks.dtype == torch.float32
    for x, y in zip(outputs, reference):
        assert len(x["instances"]) > 0
        assert x["sem_seg"].dtype == torch.float32 and x["sem_seg"].shape == y["sem_seg"].shape
        assert x["instances"].pred_boxes.tensor.dtype == torch.float32
        assert x["instances"].scores.dtype == torch.float32
        assert x["instances"].pred_masks.dtype == torch.bool
        assert x["panoptic_seg"][0].dtype == torch.int32
    # Judged against float64: the network really ran in bfloat16 (its error far above float32's),
    # and gives the semantic logits to bfloat16 precision: within the first-order bound of
    # SEMANTIC_DEPTH layers, each rounding its input and weights to bfloat16 (a relative error of
    # at most 2u each, u = 2^-8), of the logits' scale.
    inputs = images_only(batch())
    exact, autocast, reference = inference_outputs([ours, fast, to_float64(ours)], inputs)
    logits = "semantic logits"
    bound = 2 * SEMANTIC_DEPTH * EPS[torch.bfloat16] / 2 * float(reference[logits].abs().max())
    checked = assert_within_reference(
        "semantic logits, bfloat16", autocast[logits], exact[logits], reference[logits], 0, bound
    )
    assert checked.variant_error > FACTOR * checked.reference_error


def test_bfloat16_inference_pools_float32_features_at_float32_boxes(models):
    """Detectron2's ROIAlign casts the boxes to the features' dtype: under bfloat16 autocast the
    poolers must get float32 features, or every box corner is rounded to 8 significant bits."""
    fast = _autocast_model(models, "bfloat16")
    seen = []

    def record(pooler, args):
        features, boxes = args[0], args[1]
        seen.append(({x.dtype for x in features}, {b.tensor.dtype for b in boxes}))

    for pooler in (fast.roi_heads.box_pooler, fast.roi_heads.mask_pooler):
        pooler.register_forward_pre_hook(record)
    with torch.no_grad():
        outputs = fast(images_only(batch()))
    assert len(seen) == 2 and all(len(x["instances"]) > 0 for x in outputs)
    assert seen == [({torch.float32}, {torch.float32})] * 2


def test_invalid_inference_autocast_names_the_key(models):
    with pytest.raises(ValueError, match="MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = 'fp16'"):
        _autocast_model(models, "fp16")


@pytest.mark.gpu
def test_cuda_auto_memory_format_is_contiguous_and_matches_detectron2():
    torch.manual_seed(0)
    cfg, builtin = tiny_cfg(memory_format="auto"), tiny_cfg(builtin=True)
    cfg.MODEL.DEVICE = builtin.MODEL.DEVICE = "cuda"
    theirs = build_model(builtin).eval()
    ours = build_model(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.device.type == "cuda" and _layouts(ours) == {"contiguous"}
    with tf32_disabled(), torch.no_grad():
        a, b = ours(images_only(batch())), theirs(images_only(batch()))
    for x, y in zip(a, b):
        assert len(x["instances"]) > 0 and x["panoptic_seg"][0].is_cuda
        assert torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0])
        assert x["panoptic_seg"][1] == y["panoptic_seg"][1]
        assert torch.equal(x["sem_seg"], y["sem_seg"])


@pytest.mark.gpu
@pytest.mark.parametrize("setting", ["float16", "bfloat16"])
def test_cuda_autocast_inference_keeps_the_output_dtypes(models, setting):
    model = _autocast_model(models, setting).to("cuda")
    inputs = [dict(d, image=d["image"].cuda()) for d in images_only(batch())]
    with torch.no_grad():
        outputs = model(inputs)
    for x in outputs:
        assert x["sem_seg"].dtype == x["instances"].scores.dtype == torch.float32
        assert x["instances"].pred_masks.dtype == torch.bool
        assert x["panoptic_seg"][0].dtype == torch.int32 and x["panoptic_seg"][0].is_cuda


def test_detectron2_lazy_panoptic_fpn_with_the_plugin_target_needs_no_combiner():
    """Detectron2's common/models/panoptic_fpn.py with only ``_target_`` swapped: the default
    combiner is the paper's heuristic with the model's ``combine_*`` thresholds."""
    from detectron2.config import instantiate

    from panoptic_fpn_ext import PanopticFPNExt
    from panoptic_fpn_ext.modeling import PanopticHeuristicCombiner

    lazy = model_zoo.get_config("common/models/panoptic_fpn.py").model
    lazy._target_ = PanopticFPNExt
    model = instantiate(lazy)
    assert type(model.combiner) is PanopticHeuristicCombiner
    assert vars(model.combiner) == {
        "overlap_threshold": 0.5,
        "stuff_area_limit": 4096,
        "instances_score_threshold": 0.5,
    }
    lazy.combine_overlap_thresh, lazy.combine_stuff_area_thresh = 0.3, 64
    assert vars(instantiate(lazy).combiner) == {
        "overlap_threshold": 0.3,
        "stuff_area_limit": 64,
        "instances_score_threshold": 0.5,
    }
