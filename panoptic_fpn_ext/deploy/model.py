"""The whole panoptic inference of a ``PanopticFPNExt`` as one tensor function, for export."""

from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..modeling.post_processing import semantic_labels
from .combine import SEGMENT_FIELDS, combine_panoptic_table
from .detect import (
    VANILLA_NMS_ABOVE,
    clip_boxes,
    detections_from_box_outputs,
    paste_mask_region,
    pool_regions,
    top_rpn_proposals,
)

__all__ = ["PanopticInference"]


class PanopticInference(nn.Module):
    """One image in, the panoptic map and its segment table out: a ``PanopticFPNExt``'s
    ``inference`` (with ``do_postprocess``, at the output size the input dict's "height" and
    "width" give) and its combiner, with no Python branch on tensor values, so that
    ``torch.export`` can capture all of it.

    It reuses the model's modules (backbone, RPN head and anchors, RoI poolers and heads, semantic
    head), so it holds the same weights; the steps between them are the functions of
    :mod:`panoptic_fpn_ext.deploy.detect` and :func:`combine_panoptic_table`, which give results
    identical to Detectron2's when the model's weights are in the default (NCHW) layout.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: a ``PanopticFPNExt`` in eval mode with the ``PanopticHeuristicCombiner`` (its
                thresholds are read from the combiner).
        Raises:
            ValueError: a combiner without thresholds, or a backbone with square padding.
        """
        super().__init__()
        self.model = model
        combiner = model.combiner
        missing = [
            name
            for name in ("overlap_threshold", "stuff_area_limit", "instances_score_threshold")
            if not hasattr(combiner, name)
        ]
        if missing:
            raise ValueError(
                f"MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME: {type(combiner).__name__} has no "
                f"{missing}; only the heuristic combiner's thresholds can be exported"
            )
        if model.backbone.padding_constraints.get("square_size", 0):
            raise ValueError(
                "MODEL.BACKBONE: square padding (padding_constraints square_size) is not "
                "supported by the export; FPN backbones pad to their size divisibility only"
            )
        device_type = model.pixel_mean.device.type
        self.vanilla_nms_above = VANILLA_NMS_ABOVE.get(device_type, VANILLA_NMS_ABOVE["cuda"])

    def _normalize_and_pad(self, image: torch.Tensor) -> torch.Tensor:
        """``preprocess_image`` for one image: float (1, 3, H', W'), zero-padded to the
        backbone's size divisibility, and to at least :func:`smallest_padded_side` (a side
        Detectron2 would pad less is the one difference from its computation)."""
        model = self.model
        image = (image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
        stride = max(model.backbone.size_divisibility, 1)
        smallest = smallest_padded_side(model)
        height, width = image.shape[-2:]
        padded_h = torch.sym_max((height + stride - 1) // stride * stride, smallest)
        padded_w = torch.sym_max((width + stride - 1) // stride * stride, smallest)
        # A gather from the image plus one zero row and column, not F.pad: the exporter would
        # take "padding > 0" (or a padded view's contiguity) for a rule.
        channels = image.shape[0]
        image = torch.cat([image, image.new_zeros((channels, height, 1))], dim=2)
        image = torch.cat([image, image.new_zeros((channels, 1, width + 1))], dim=1)
        rows = torch.arange(padded_h, device=image.device).clamp(max=height)
        cols = torch.arange(padded_w, device=image.device).clamp(max=width)
        return image.index_select(1, rows).index_select(2, cols)[None]

    def _proposals(self, features: Dict[str, torch.Tensor], image_size: Tuple[int, int]):
        """``RPN.forward`` at test time: float (R, 4) proposal boxes."""
        rpn = self.model.proposal_generator
        levels = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(levels)
        logits, deltas = rpn.rpn_head(levels)
        logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
        box_dim = rpn.anchor_generator.box_dim
        deltas = [
            x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for x in deltas
        ]
        proposals = rpn._decode_proposals(anchors, deltas)
        boxes, _ = top_rpn_proposals(
            proposals,
            logits,
            image_size,
            rpn.nms_thresh,
            rpn.pre_nms_topk[False],
            rpn.post_nms_topk[False],
            rpn.min_box_size,
            self.vanilla_nms_above,
        )
        return boxes

    def _detections(self, features: Dict[str, torch.Tensor], proposals: torch.Tensor, image_size):
        """``StandardROIHeads`` box and mask branches: boxes (D, 4), scores (D,), classes (D,),
        mask probabilities (D, M, M)."""
        heads = self.model.roi_heads
        box_features = pool_regions(
            heads.box_pooler, [features[f] for f in heads.box_in_features], proposals
        )
        class_logits, deltas = heads.box_predictor(heads.box_head(box_features))
        predictor = heads.box_predictor
        boxes, scores, classes = detections_from_box_outputs(
            class_logits,
            deltas,
            proposals,
            predictor.box2box_transform,
            predictor.use_sigmoid_ce,
            image_size,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
            self.vanilla_nms_above,
        )
        mask_features = pool_regions(
            heads.mask_pooler, [features[f] for f in heads.mask_in_features], boxes
        )
        mask_logits = heads.mask_head.layers(mask_features)
        if mask_logits.shape[1] == 1:
            mask_probs = mask_logits[:, 0].sigmoid()
        else:
            mask_probs = mask_logits[torch.arange(mask_logits.shape[0]), classes].sigmoid()
        return boxes, scores, classes, mask_probs

    def forward(self, image: torch.Tensor, output_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            image: float32 (3, h, w), pixel values 0-255 in the model's input format
                (``INPUT.FORMAT``, BGR by default), at the size to predict at.
            output_size: an empty tensor of shape (0, H, W): the size of the outputs (the
                image's size before it was resized to (h, w); an exported program's integer
                inputs are the sizes of its tensors).
        Returns:
            panoptic: int32 (H, W) segment ids, 0 = unlabelled; then the segment table in id
            order, each (S,): id int64, category int64 (contiguous thing class for things,
            semantic label for stuff), is_thing bool, score float32 (NaN for stuff), area int64
            (pixels).
        """
        height, width = image.shape[-2:]
        out_height, out_width = output_size.shape[-2:]
        padded = self._normalize_and_pad(image)
        features = self.model.backbone(padded)
        sem_seg, _ = self.model.sem_seg_head(features, None)
        proposals = self._proposals(features, (height, width))
        boxes, scores, classes, mask_probs = self._detections(features, proposals, (height, width))

        # sem_seg_postprocess: crop the padding (index_select, not a view, for the same reason
        # as in _normalize_and_pad) and resize to the output size
        rows = torch.arange(height, device=sem_seg.device)
        cols = torch.arange(width, device=sem_seg.device)
        logits = sem_seg.index_select(2, rows).index_select(3, cols)
        logits = F.interpolate(
            logits, size=(out_height, out_width), mode="bilinear", align_corners=False
        )
        # detector_postprocess: scale to the output size (Boxes.scale: each coordinate times a
        # Python float), clip, drop empty boxes; masks are pasted one at a time when combined
        x_scaled = boxes[:, 0::2] * (out_width / width)
        y_scaled = boxes[:, 1::2] * (out_height / height)
        boxes = torch.stack([x_scaled[:, 0], y_scaled[:, 0], x_scaled[:, 1], y_scaled[:, 1]], 1)
        boxes = clip_boxes(boxes, out_height, out_width)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        mask_probs = mask_probs[keep]

        def mask_region(index: torch.Tensor):
            mask, box = mask_probs.index_select(0, index)[0], boxes.index_select(0, index)[0]
            return paste_mask_region(mask, box, out_height, out_width)

        combiner = self.model.combiner
        table = combine_panoptic_table(
            scores,
            classes,
            mask_region,
            semantic_labels(logits[0]),
            logits.shape[1],
            combiner.overlap_threshold,
            combiner.stuff_area_limit,
            combiner.instances_score_threshold,
        )
        return (table["panoptic"],) + tuple(table[name] for name in SEGMENT_FIELDS)


def smallest_padded_side(model: nn.Module) -> int:
    """The program pads each image side to at least three times the backbone's size
    divisibility: a smaller padded side gives 1-pixel feature maps at the coarsest level, for
    which the exported shapes would not hold."""
    return 3 * max(model.backbone.size_divisibility, 1)
