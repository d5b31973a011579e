"""The plugin's built-in datasets, registered when ``panoptic_fpn_ext.data`` is imported.

Registration only records loaders and metadata; no file is read until a dataset is used. Paths are
under ``$DETECTRON2_DATASETS`` (default ``./datasets``), in Detectron2's layout:

* ``panoptic_fpn_ext_shapes_{train,val}``: the synthetic shapes set, generated on first use under
  ``panoptic_fpn_ext_shapes/``;
* ``panoptic_fpn_ext_coco_2017_{train,val}``: ``coco/{train,val}2017/``,
  ``coco/panoptic_{train,val}2017/``, ``coco/annotations/panoptic_{train,val}2017.json`` (and
  ``instances_{train,val}2017.json`` for mask AP);
* ``panoptic_fpn_ext_cityscapes_fine_panoptic_{train,val}``: ``cityscapes/leftImg8bit/{split}/``,
  ``cityscapes/gtFine/cityscapes_panoptic_{split}.json`` and ``.../cityscapes_panoptic_{split}/``.
"""

import os
from functools import partial

from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from ..registration import register_dataset_once
from .cityscapes_panoptic import cityscapes_panoptic_metadata, load_cityscapes_panoptic_json
from .coco_panoptic import dataset_metadata, load_coco_panoptic_json
from .synthetic import (
    SHAPES_IMAGE_SIZE,
    SHAPES_SEED,
    SHAPES_SPLIT_SIZES,
    load_shapes_dataset,
    shapes_metadata,
    shapes_paths,
)

__all__ = ["datasets_root", "register_all_builtin_datasets"]

SHAPES_DIR = "panoptic_fpn_ext_shapes"
COCO_MISSING_HINT = (
    "Download COCO 2017 panoptic annotations (panoptic_annotations_trainval2017.zip) and unzip "
    "them, including the PNG archives inside, under coco/ (Detectron2's datasets/README.md)."
)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, or ``datasets`` (relative to the working directory)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _register_shapes(root: str) -> None:
    shapes_root = os.path.join(root, SHAPES_DIR)
    for split, num_images in SHAPES_SPLIT_SIZES.items():
        paths = shapes_paths(shapes_root, split)
        loader = partial(
            load_shapes_dataset, shapes_root, split, num_images, SHAPES_IMAGE_SIZE, SHAPES_SEED
        )
        metadata = dataset_metadata(
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["instances_json"],
        )
        register_dataset_once(
            f"panoptic_fpn_ext_shapes_{split}", loader, {**shapes_metadata(), **metadata}
        )


def _register_coco(root: str) -> None:
    classes = _get_builtin_metadata("coco_panoptic_separated")
    for split in ("train", "val"):
        coco = os.path.join(root, "coco")
        image_root = os.path.join(coco, f"{split}2017")
        panoptic_root = os.path.join(coco, f"panoptic_{split}2017")
        panoptic_json = os.path.join(coco, "annotations", f"panoptic_{split}2017.json")
        instances_json = os.path.join(coco, "annotations", f"instances_{split}2017.json")
        loader = partial(
            load_coco_panoptic_json,
            panoptic_json,
            image_root,
            panoptic_root,
            classes,
            missing_hint=COCO_MISSING_HINT,
        )
        metadata = dataset_metadata(image_root, panoptic_root, panoptic_json, instances_json)
        register_dataset_once(
            f"panoptic_fpn_ext_coco_2017_{split}", loader, {**classes, **metadata}
        )


def _register_cityscapes(root: str) -> None:
    classes = cityscapes_panoptic_metadata()
    for split in ("train", "val"):
        image_root = os.path.join(root, "cityscapes", "leftImg8bit", split)
        gt_fine = os.path.join(root, "cityscapes", "gtFine")
        panoptic_root = os.path.join(gt_fine, f"cityscapes_panoptic_{split}")
        panoptic_json = os.path.join(gt_fine, f"cityscapes_panoptic_{split}.json")
        loader = partial(load_cityscapes_panoptic_json, panoptic_json, image_root, panoptic_root)
        metadata = dataset_metadata(image_root, panoptic_root, panoptic_json, None)
        register_dataset_once(
            f"panoptic_fpn_ext_cityscapes_fine_panoptic_{split}", loader, {**classes, **metadata}
        )


def register_all_builtin_datasets(root: str) -> None:
    """Register the shapes, COCO 2017 and Cityscapes panoptic datasets under ``root``."""
    _register_shapes(root)
    _register_coco(root)
    _register_cityscapes(root)
