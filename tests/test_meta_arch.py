"""PanopticFPNExt: weight compatibility and equal outputs with Detectron2's PanopticFPN, loss
weights, fp32 semantic loss, and learning on a fixed tiny batch."""

import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file

BASE = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
SIZE = 96


def tiny_cfg(meta_arch="PanopticFPNExt", head="PanopticFPNExtSemSegHead"):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, BASE)
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.SEM_SEG_HEAD.NAME = head
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    return cfg


def batch(seed=0):
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


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = build_model(tiny_cfg())
    theirs = build_model(tiny_cfg("PanopticFPN", "SemSegFPNHead"))
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours.eval(), theirs.eval()


def test_same_outputs_as_detectron2(models):
    ours, theirs = models
    inputs = [{k: v for k, v in d.items() if k in ("image", "height", "width")} for d in batch()]
    with torch.no_grad():
        a, b = ours(inputs), theirs(inputs)
    for x, y in zip(a, b):
        assert len(x["instances"]) > 0  # not vacuous
        assert x["sem_seg"].shape == (4, 80, 80)
        assert torch.equal(x["sem_seg"], y["sem_seg"])
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            u, v = x["instances"].get(field), y["instances"].get(field)
            u, v = (u.tensor, v.tensor) if isinstance(u, Boxes) else (u, v)
            assert torch.equal(u, v), field
        assert torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0])
        assert x["panoptic_seg"][1] == y["panoptic_seg"][1]


def test_raw_outputs_without_postprocess(models):
    ours, _ = models
    inputs = [{"image": d["image"]} for d in batch()]
    with torch.no_grad():
        instances, sem_seg = ours.inference(inputs, do_postprocess=False)
    assert len(instances) == 2 and sem_seg.shape == (2, 4, SIZE, SIZE)


def losses(model, inputs):
    model.train()
    with EventStorage():
        return model(inputs)


def test_loss_weights_apply():
    torch.manual_seed(1)
    cfg = tiny_cfg()
    base = build_model(cfg)
    cfg2 = copy.deepcopy(cfg)
    cfg2.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 2.0
    cfg2.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # quick start: 0.5
    scaled = build_model(cfg2)
    scaled.load_state_dict(base.state_dict())
    inputs = batch()
    torch.manual_seed(2)
    a = losses(base, inputs)
    torch.manual_seed(2)
    b = losses(scaled, inputs)
    assert set(a) == {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
    }
    for key in a:
        # lambda_i scales the RoI heads' losses (classification, box, mask), as in the paper and
        # Detectron2; RPN losses are not weighted; lambda_s: 0.5 -> 1.0 doubles loss_sem_seg.
        factor = 1.0 if key.startswith("loss_rpn") else 2.0
        assert torch.allclose(b[key], factor * a[key], rtol=1e-4), key


def test_semantic_loss_is_fp32_under_autocast():
    head = build_model(tiny_cfg()).sem_seg_head
    logits = torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    target = torch.randint(0, 4, (1, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head.losses(logits, target)["loss_sem_seg"]
    expected = (
        torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(logits.float(), scale_factor=4, mode="bilinear"), target
        )
        * head.loss_weight
    )
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected)


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = batch()
    totals = []
    for _ in range(8):
        total = sum(losses(model, inputs).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total))
    assert totals[-1] < 0.8 * totals[0], totals
