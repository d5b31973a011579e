"""Panoptic FPN's parts: the semantic head, the panoptic combiner and the meta-architecture."""

from .combiner import PANOPTIC_COMBINER_REGISTRY, PanopticHeuristicCombiner, build_panoptic_combiner
from .meta_arch import PanopticFPNExt
from .post_processing import combine_panoptic, paste_regions
from .semantic_head import PanopticFPNExtSemSegHead

__all__ = [
    "PANOPTIC_COMBINER_REGISTRY",
    "PanopticFPNExt",
    "PanopticFPNExtSemSegHead",
    "PanopticHeuristicCombiner",
    "build_panoptic_combiner",
    "combine_panoptic",
    "paste_regions",
]
