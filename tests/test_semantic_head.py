"""PanopticFPNExtSemSegHead: the paper's layers, output shapes, gradient flow, and its loss
(labelled pixels only, fp32 under autocast) against Detectron2's SemSegFPNHead."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from torch import nn

from float_reference import assert_within_reference, summation_bound, to_float64
from panoptic_fpn_ext import add_panoptic_fpn_ext_config

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
IGNORE = 255


def head_cfg(name: str = "PanopticFPNExtSemSegHead"):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NAME = name
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = list(STRIDES)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.5
    return cfg


def build_heads():
    """The plugin's head and Detectron2's, with the same weights."""
    shapes = {k: ShapeSpec(channels=8, stride=s) for k, s in STRIDES.items()}
    torch.manual_seed(0)
    ours = build_sem_seg_head(head_cfg(), shapes)
    theirs = build_sem_seg_head(head_cfg("SemSegFPNHead"), shapes)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def features(batch: int = 2, height: int = 64, width: int = 96):
    g = torch.Generator().manual_seed(1)
    return {
        k: torch.randn(batch, 8, height // s, width // s, generator=g) for k, s in STRIDES.items()
    }


def targets(batch: int = 2, height: int = 64, width: int = 96, ignored: float = 0.3):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (batch, height, width), generator=g)
    labels[torch.rand(batch, height, width, generator=g) < ignored] = IGNORE
    return labels


def test_layers_are_the_papers():
    head, _ = build_heads()
    # stages of 3x3 conv + GroupNorm + ReLU (+ 2x bilinear) per level until stride 4
    for level, stages in {"p2": 1, "p3": 1, "p4": 2, "p5": 3}.items():
        ops = list(getattr(head, level))
        convs = [op for op in ops if isinstance(op, nn.Conv2d)]
        ups = [op for op in ops if isinstance(op, nn.Upsample)]
        assert len(convs) == stages and len(ups) == (0 if level == "p2" else stages)
        assert all(c.kernel_size == (3, 3) and c.out_channels == 32 for c in convs)
        assert all(isinstance(c.norm, nn.GroupNorm) and c.activation is not None for c in convs)
        assert all(u.scale_factor == 2.0 and u.mode == "bilinear" for u in ups)
    assert head.predictor.kernel_size == (1, 1) and head.predictor.out_channels == 5


@pytest.mark.numerics
def test_inference_output_shape_and_equality_with_detectron2():
    ours, theirs = build_heads()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        out, losses = ours(features())
        expected, _ = theirs(features())
    assert out.shape == (2, 5, 64, 96) and losses == {}
    assert torch.equal(out, expected)


def assert_loss_close(quantity, loss, expected, exact, labels):
    """``loss`` and ``expected`` (float32) are one mean over the labelled pixels of ``labels``
    computed in two ways: ``loss``'s error against ``exact`` (float64) is within FACTOR x
    ``expected``'s or the rounding bound of that mean (tests/float_reference.py)."""
    floor = summation_bound(int((labels != IGNORE).sum()), abs(exact.item()))
    assert_within_reference(quantity, loss, expected, exact, floor=floor)


@pytest.mark.numerics
def test_loss_equals_detectron2_and_every_parameter_gets_a_gradient():
    ours, theirs = build_heads()
    ours.train(), theirs.train()
    out, losses = ours(features(), targets())
    _, expected = theirs(features(), targets())
    assert out is None and set(losses) == {"loss_sem_seg"}
    _, exact = to_float64(theirs)(to_float64(features()), targets())
    loss = "loss_sem_seg"
    assert_loss_close(loss, losses[loss], expected[loss], exact[loss], targets())
    losses["loss_sem_seg"].backward()
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.numerics
def test_loss_averages_over_labelled_pixels_only():
    head, _ = build_heads()
    head.train()
    labels = targets(ignored=0.0)
    _, full = head(features(), labels)
    partly = labels.clone()
    partly[:, :, : labels.shape[2] // 2] = IGNORE
    _, half = head(features(), partly)
    kept = partly != IGNORE
    expected, exact = (
        per_pixel_loss(model, feature_maps, labels)
        for model, feature_maps in ((head, features()), (to_float64(head), to_float64(features())))
    )
    half_loss, half_exact = expected[kept].mean() * 0.5, exact[kept].mean() * 0.5
    assert_loss_close("half", half["loss_sem_seg"], half_loss, half_exact, partly)
    full_loss, full_exact = expected.mean() * 0.5, exact.mean() * 0.5
    assert_loss_close("full", full["loss_sem_seg"], full_loss, full_exact, labels)


def per_pixel_loss(head, feature_maps, labels):
    """The cross entropy of each pixel of ``head``'s logits upsampled to the labels' size."""
    logits = nn.functional.interpolate(
        head.layers(feature_maps), scale_factor=4, mode="bilinear", align_corners=False
    )
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def test_no_labelled_pixels_gives_zero_loss_not_nan():
    head, _ = build_heads()
    head.train()
    _, losses = head(features(), torch.full((2, 64, 96), IGNORE))
    loss = losses["loss_sem_seg"]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # a zero gradient, not NaN
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_is_fp32_under_autocast(dtype):
    head, _ = build_heads()
    logits = torch.randn(2, 5, 16, 24).to(dtype)
    labels = targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head.losses(logits, labels)["loss_sem_seg"]
    expected, exact = (mean_loss(logits.to(t), labels) for t in (torch.float32, torch.float64))
    assert loss.dtype == torch.float32
    assert_loss_close("loss_sem_seg", loss, expected, exact, labels)


def mean_loss(logits, labels):
    """The head's loss, written out: upsampled logits' cross entropy x the loss weight 0.5."""
    upsampled = nn.functional.interpolate(logits, scale_factor=4, mode="bilinear")
    return nn.functional.cross_entropy(upsampled, labels, ignore_index=IGNORE) * 0.5
