"""Deployment: the whole panoptic inference as one ``torch.export`` program (see README)."""

from .combine import SEGMENT_FIELDS, combine_panoptic_table
from .export import artifact_metadata, export_panoptic_model, save_artifact
from .model import PanopticInference

__all__ = [
    "SEGMENT_FIELDS",
    "combine_panoptic_table",
    "PanopticInference",
    "export_panoptic_model",
    "artifact_metadata",
    "save_artifact",
]
