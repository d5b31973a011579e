"""Panoptic Feature Pyramid Networks (Kirillov, Girshick, He, Dollar, 2019) as a Detectron2 plugin.

``import panoptic_fpn_ext`` registers every component in Detectron2's registries:

* ``META_ARCH_REGISTRY``: ``PanopticFPNExt``
* ``SEM_SEG_HEADS_REGISTRY``: ``PanopticFPNExtSemSegHead``
* ``PANOPTIC_COMBINER_REGISTRY`` (the plugin's own): ``PanopticHeuristicCombiner``
* ``DatasetCatalog``: the bundled synthetic "shapes" set, COCO 2017 panoptic and Cityscapes
  panoptic, all under names that start with ``panoptic_fpn_ext_``.
"""

from . import data, evaluation, model_zoo, modeling  # noqa: F401  (importing registers them)
from .config import (
    add_panoptic_fpn_ext_config,
    check_class_counts,
    merge_config_file,
    merge_config_list,
    validate_config,
)
from .data import PanopticDatasetMapper, check_datasets, register_coco_panoptic_dataset
from .evaluation import PanopticQualityEvaluator, build_evaluator, build_panoptic_fpn_evaluators
from .modeling import (
    PANOPTIC_COMBINER_REGISTRY,
    PanopticFPNExt,
    PanopticFPNExtSemSegHead,
    build_panoptic_combiner,
    combine_panoptic,
)

__version__ = "0.1.0"
