"""The paper's semantic segmentation branch, registered as ``PanopticFPNExtSemSegHead``."""

from typing import Dict

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

from ..registration import register_once

__all__ = ["PanopticFPNExtSemSegHead"]


@register_once(SEM_SEG_HEADS_REGISTRY)
class PanopticFPNExtSemSegHead(SemSegFPNHead):
    """Semantic FPN branch (Kirillov et al. 2019, Fig. 3).

    Each FPN level P2-P5 (strides 4-32) goes through ``log2(stride / 4)`` stages (at least one) of
    3x3 conv (``CONVS_DIM`` = 128 channels) + norm (``NORM`` = GroupNorm) + ReLU + 2x bilinear
    upsampling; the stride-4 maps are summed, a 1x1 conv predicts ``NUM_CLASSES`` logits (stuff
    classes + "other"), and 4x bilinear upsampling returns them at input resolution.

    The layers are Detectron2's ``SemSegFPNHead`` (same module names, so weights are
    interchangeable). The loss is per-pixel cross-entropy averaged over labelled pixels
    (``IGNORE_VALUE`` excluded), times ``LOSS_WEIGHT``; it is computed with autocast disabled, in
    fp32, so mixed-precision training does not change it.
    """

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: (N, C, H/4, W/4) logits, any float dtype.
            targets: (N, H, W) int64 labels, ``ignore_value`` where unlabelled.
        Returns:
            {"loss_sem_seg": fp32 scalar}.
        """
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            return super().losses(predictions.float(), targets)
