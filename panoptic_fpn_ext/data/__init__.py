"""Panoptic datasets and the panoptic dataset mapper.

Importing this package registers the built-in datasets (no file is read until one is used):
``panoptic_fpn_ext_shapes_{train,val}``, ``panoptic_fpn_ext_coco_2017_{train,val}`` and
``panoptic_fpn_ext_cityscapes_fine_panoptic_{train,val}``; see :mod:`.builtin` for their paths.
Custom datasets in COCO panoptic format: :func:`register_coco_panoptic_dataset`.
"""

# The data modules compile their loops with the evaluation package's jit and read PNGs with its
# reader, and the evaluation package's builders read datasets with data modules: evaluation is
# imported first, so that the data modules it imports can import its modules in turn.
from .. import evaluation  # noqa: F401, isort: skip
from .builtin import datasets_root, register_all_builtin_datasets
from .cityscapes_panoptic import cityscapes_panoptic_metadata, load_cityscapes_panoptic_json
from .coco_panoptic import (
    load_coco_panoptic_json,
    panoptic_metadata_from_categories,
    register_coco_panoptic_dataset,
)
from .cropped_masks import CroppedMasks
from .dataset_check import check_dataset_files, check_datasets, check_records
from .dataset_mapper import PanopticDatasetMapper, semantic_from_panoptic, semantic_label
from .panoptic_io import PanopticDataError, PanopticPNG, id2rgb, read_image_file, rgb2id
from .panoptic_png import read_panoptic_png
from .synthetic import (
    SHAPES_CATEGORIES,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    load_shapes_dataset,
    shapes_metadata,
)

__all__ = [
    "CroppedMasks",
    "PanopticDataError",
    "PanopticDatasetMapper",
    "PanopticPNG",
    "SHAPES_CATEGORIES",
    "check_dataset_files",
    "check_datasets",
    "check_records",
    "cityscapes_panoptic_metadata",
    "datasets_root",
    "ensure_shapes_dataset",
    "generate_shapes_dataset",
    "id2rgb",
    "load_cityscapes_panoptic_json",
    "load_coco_panoptic_json",
    "load_shapes_dataset",
    "panoptic_metadata_from_categories",
    "read_image_file",
    "read_panoptic_png",
    "register_all_builtin_datasets",
    "register_coco_panoptic_dataset",
    "rgb2id",
    "semantic_from_panoptic",
    "semantic_label",
    "shapes_metadata",
]

register_all_builtin_datasets(datasets_root())
