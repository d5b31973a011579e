"""Config keys of the panoptic_fpn_ext plugin.

The plugin reuses Detectron2's own keys wherever the meaning is the same, so that the model zoo's
Panoptic FPN YAMLs and weights work unchanged:

* ``MODEL.SEM_SEG_HEAD.*`` (IN_FEATURES, IGNORE_VALUE, NUM_CLASSES, CONVS_DIM, COMMON_STRIDE, NORM,
  LOSS_WEIGHT) for the semantic head;
* ``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT`` for the instance-loss weight;
* ``MODEL.PANOPTIC_FPN.COMBINE.*`` (OVERLAP_THRESH, STUFF_AREA_LIMIT, INSTANCES_CONFIDENCE_THRESH)
  for the panoptic combiner's thresholds.

Only what is new lives under ``MODEL.PANOPTIC_FPN_EXT`` and ``PANOPTIC_FPN_EXT``. Detectron2's
CfgNode rejects unknown keys, so a misspelled key in these sections fails when the YAML is merged;
:func:`merge_config_file` adds the file's path to that error.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_panoptic_fpn_ext_config", "merge_config_file"]


def add_panoptic_fpn_ext_config(cfg: CN) -> None:
    """Add every key the plugin reads, with its default, to ``cfg`` (in place).

    Calling it again on the same config is a no-op, so several projects may each call it.
    """
    if "PANOPTIC_FPN_EXT" in cfg.MODEL:
        return
    cfg.MODEL.PANOPTIC_FPN_EXT = CN()
    # Entry of PANOPTIC_COMBINER_REGISTRY that turns instances + semantic labels into a panoptic
    # map. Its thresholds are Detectron2's MODEL.PANOPTIC_FPN.COMBINE.* keys.
    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "PanopticHeuristicCombiner"

    cfg.PANOPTIC_FPN_EXT = CN()
    cfg.PANOPTIC_FPN_EXT.EVAL = CN()
    # Prediction files to write next to the metrics, each atomically: any of "coco" (COCO
    # panoptic JSON + PNGs, for the COCO test server) and "cityscapes" (Cityscapes panoptic format).
    cfg.PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS = []
    # Also run Detectron2's COCOEvaluator (box/mask AP) when the dataset has instance annotations.
    cfg.PANOPTIC_FPN_EXT.EVAL.INSTANCE_AP = True
    # Also run Detectron2's SemSegEvaluator (mIoU over stuff classes + "things").
    cfg.PANOPTIC_FPN_EXT.EVAL.SEMANTIC_MIOU = True


def merge_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)``, with errors that name the file and the offending key."""
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"Config file {path}: {e}") from e
