"""The paper's semantic segmentation branch, registered as ``PanopticFPNExtSemSegHead``."""

from typing import Dict

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch.nn import functional as F

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
    interchangeable). The loss is per-pixel cross-entropy summed over the labelled pixels
    (``IGNORE_VALUE`` excluded) and divided by their number, times ``LOSS_WEIGHT``. It is computed
    in fp32 with autocast disabled, so mixed-precision training does not change it, and it is 0
    (not NaN, as a plain mean would give) for a batch without labelled pixels.
    """

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, H / common_stride, W / common_stride) logits, contiguous (NCHW) whatever the
        model's memory layout: on CPU, bilinear upsampling of a channels-last map, here and in
        the output resize, took several times as long as of an NCHW one."""
        return super().layers(features).contiguous()

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: (B, C, H / common_stride, W / common_stride) logits, any float dtype.
            targets: int64 (B, H, W) labels, ``ignore_value`` where unlabelled.
        Returns:
            {"loss_sem_seg": fp32 scalar}.
        """
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            logits = F.interpolate(
                predictions.float(),
                scale_factor=self.common_stride,
                mode="bilinear",
                align_corners=False,
            )
            total = F.cross_entropy(
                logits, targets, reduction="sum", ignore_index=self.ignore_value
            )
            num_labelled = (targets != self.ignore_value).sum().clamp(min=1)
            return {"loss_sem_seg": total / num_labelled * self.loss_weight}
