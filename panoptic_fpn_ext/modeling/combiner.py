"""The panoptic combiner registry and the paper's heuristic combiner."""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from fvcore.common.registry import Registry

from ..registration import register_once
from .post_processing import combine_panoptic

__all__ = ["PANOPTIC_COMBINER_REGISTRY", "build_panoptic_combiner", "PanopticHeuristicCombiner"]

PANOPTIC_COMBINER_REGISTRY = Registry("PANOPTIC_COMBINER")
PANOPTIC_COMBINER_REGISTRY.__doc__ = """
Registry for panoptic combiners: callables ``combiner(instances, semantic_labels)`` ->
``(panoptic_seg int32 (H, W), segments_info)`` in Detectron2's panoptic format. An entry is
constructed with ``cfg`` and selected by ``MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME``.
"""


def build_panoptic_combiner(cfg):
    """The combiner named by ``MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME``, built from ``cfg``."""
    return PANOPTIC_COMBINER_REGISTRY.get(cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME)(cfg)


@register_once(PANOPTIC_COMBINER_REGISTRY)
class PanopticHeuristicCombiner:
    """The paper's post-processing (Sec. 3): see :func:`combine_panoptic`."""

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
    def from_config(cls, cfg) -> Dict[str, float]:
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return {
            "overlap_threshold": combine.OVERLAP_THRESH,
            "stuff_area_limit": combine.STUFF_AREA_LIMIT,
            "instances_score_threshold": combine.INSTANCES_CONFIDENCE_THRESH,
        }

    def __call__(
        self, instances: Instances, semantic_labels: torch.Tensor
    ) -> Tuple[torch.Tensor, List[Dict]]:
        return combine_panoptic(
            instances,
            semantic_labels,
            self.overlap_threshold,
            self.stuff_area_limit,
            self.instances_score_threshold,
        )
