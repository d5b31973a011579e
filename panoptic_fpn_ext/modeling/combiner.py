"""The panoptic combiner registry and the paper's heuristic combiner."""

from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.structures import Instances
from fvcore.common.registry import Registry

from ..registration import register_once
from .post_processing import combine_panoptic

__all__ = ["PANOPTIC_COMBINER_REGISTRY", "build_panoptic_combiner", "PanopticHeuristicCombiner"]

PANOPTIC_COMBINER_REGISTRY = Registry("PANOPTIC_COMBINER")
PANOPTIC_COMBINER_REGISTRY.__doc__ = """
Registry for panoptic combiners: callables
``combiner(instances, semantic_labels, mask_boxes=None) -> (panoptic_seg, segments_info)`` that
turn one image's instances (``Instances`` at output size, with scores, pred_classes, pred_masks)
and its semantic labels (int64 (H, W), 0 = "other", stuff 1..S) into an int32 (H, W) panoptic map
and its ``segments_info`` list, in Detectron2's panoptic format. ``mask_boxes`` is optional: int64
(N, 4) pixel rectangles that contain each mask (see :func:`panoptic_fpn_ext.modeling.paste_regions`,
which ``PanopticFPNExt`` passes); a combiner may use or ignore them. An entry is constructed with
``cfg`` and selected by ``MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME``.
"""


def build_panoptic_combiner(cfg: CfgNode) -> Callable:
    """The combiner named by ``MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME``, built from ``cfg``."""
    name = cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME
    if name not in PANOPTIC_COMBINER_REGISTRY:
        raise ValueError(
            f"Config key MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = {name!r} is not in "
            f"PANOPTIC_COMBINER_REGISTRY; registered: "
            f"{sorted(k for k, _ in PANOPTIC_COMBINER_REGISTRY)}"
        )
    return PANOPTIC_COMBINER_REGISTRY.get(name)(cfg)


@register_once(PANOPTIC_COMBINER_REGISTRY)
class PanopticHeuristicCombiner:
    """The paper's post-processing (Sec. 3): see :func:`combine_panoptic`, which runs its
    sequential path on CPU and its parallel path (a fixed number of kernels per image plus a few
    fixed-point rounds, whatever the number of instances) on other devices."""

    @configurable
    def __init__(
        self,
        *,
        overlap_threshold: float = 0.5,
        stuff_area_limit: float = 4096,
        instances_score_threshold: float = 0.5,
    ):
        """
        Args:
            overlap_threshold: skip an instance when more than this share of its mask is taken.
            stuff_area_limit: drop stuff regions smaller than this many pixels (output size).
            instances_score_threshold: ignore instances scoring below this.
        """
        self.overlap_threshold = overlap_threshold
        self.stuff_area_limit = stuff_area_limit
        self.instances_score_threshold = instances_score_threshold

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, float]:
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return {
            "overlap_threshold": combine.OVERLAP_THRESH,
            "stuff_area_limit": combine.STUFF_AREA_LIMIT,
            "instances_score_threshold": combine.INSTANCES_CONFIDENCE_THRESH,
        }

    def __call__(
        self,
        instances: Instances,
        semantic_labels: torch.Tensor,
        mask_boxes: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, List[Dict]]:
        """See :func:`combine_panoptic`; returns (int32 (H, W) panoptic map, segments_info)."""
        return combine_panoptic(
            instances,
            semantic_labels,
            self.overlap_threshold,
            self.stuff_area_limit,
            self.instances_score_threshold,
            mask_boxes=mask_boxes,
        )
