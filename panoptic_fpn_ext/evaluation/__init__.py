"""Panoptic evaluation: streaming PQ, prediction export, and the evaluators of train_net.py."""

from .build import (
    SemanticFromPanoptic,
    build_evaluator,
    build_panoptic_fpn_evaluators,
    evaluator_options,
    panoptic_fpn_evaluators,
    semantic_evaluation_dataset,
)
from .export import PanopticExporter, export_paths
from .panoptic_evaluator import (
    PanopticQualityEvaluator,
    read_ground_truth,
    read_panoptic_id_map,
)
from .pq import (
    PanopticPredictionError,
    PQStatistics,
    Segments,
    image_pq_statistics,
    pq_per_category,
    pq_results,
    pq_summary,
    segments_from_info,
)

__all__ = [
    "PQStatistics",
    "PanopticExporter",
    "PanopticPredictionError",
    "PanopticQualityEvaluator",
    "Segments",
    "SemanticFromPanoptic",
    "build_evaluator",
    "build_panoptic_fpn_evaluators",
    "evaluator_options",
    "export_paths",
    "image_pq_statistics",
    "panoptic_fpn_evaluators",
    "pq_per_category",
    "pq_results",
    "pq_summary",
    "read_ground_truth",
    "read_panoptic_id_map",
    "segments_from_info",
    "semantic_evaluation_dataset",
]
