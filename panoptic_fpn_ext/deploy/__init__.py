"""Deployment: the whole panoptic inference as one ``torch.export`` program (see README)."""

from .combine import SEGMENT_FIELDS, combine_panoptic_table, full_image_masks
from .export import artifact_metadata, example_inputs, export_panoptic_model, save_artifact
from .graph_format import check_graph_program, save_graph_program
from .model import PanopticInference

__all__ = [
    "SEGMENT_FIELDS",
    "combine_panoptic_table",
    "full_image_masks",
    "PanopticInference",
    "export_panoptic_model",
    "example_inputs",
    "artifact_metadata",
    "save_artifact",
    "save_graph_program",
    "check_graph_program",
]
