"""What the predict and export tools share: their config flags and the config they build.

Both take ``--config-file``, ``--dataset NAME``, ``--import MODULE`` (repeatable),
``--allow-partial-weights`` and ``--opts KEY VALUE ...`` (config overrides, last on the line, as in Detectron2's demo). Overrides
given without ``--opts`` are refused with a message that names it.
"""

import argparse
import importlib
import logging
from typing import List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import (
    add_panoptic_fpn_ext_config,
    merge_config_file,
    merge_config_list,
    validate_config,
)
from ..engine.weights import ALLOW_PARTIAL_FLAG, resolve_weights
from ..model_zoo import resolve_config_file

__all__ = [
    "add_config_arguments",
    "parse_arguments",
    "import_user_modules",
    "build_cfg",
    "check_weights",
]

# Metadata the COCO-panoptic JSON needs (category ids and names).
REQUIRED_METADATA = (
    "thing_classes",
    "stuff_classes",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)
OPTS_HINT = "config overrides go after --opts: --opts KEY VALUE ..."

logger = logging.getLogger("panoptic_fpn_ext.tools")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file``, ``--dataset``, ``--import``, ``--allow-partial-weights`` and ``--opts``
    (which must come last)."""
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a config path, or the name of one of the plugin's configs "
        "(e.g. COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="registered dataset whose metadata names the classes (default: DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (e.g. the code that registers your dataset); repeatable",
    )
    parser.add_argument(
        ALLOW_PARTIAL_FLAG,
        dest="allow_partial",
        action="store_true",
        help="use weights that leave tensors of the model unloaded (refused otherwise)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides, KEY VALUE pairs, last on the line: --opts MODEL.WEIGHTS model.pth",
    )


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[List[str]]):
    """``parser.parse_args``, with words it does not know refused by a message naming
    ``--opts`` (the form ``KEY VALUE`` without it, which the export tool once took)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} ({OPTS_HINT})")
    return args


def import_user_modules(modules: Sequence[str]) -> None:
    """Import each module (e.g. the one that registers a user's datasets), naming a failing one."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"--import {module}: {e} (the module must be importable: on PYTHONPATH or in "
                f"the working directory)"
            ) from e


def build_cfg(
    config_file: str,
    opts: List[str],
    dataset: Optional[str] = None,
    confidence_threshold: Optional[float] = None,
) -> CfgNode:
    """The validated, frozen config of a prediction or export run.

    Args:
        config_file: the YAML: a path, or the name of one of the plugin's configs
            (``panoptic_fpn_ext.model_zoo``).
        opts: command-line ``KEY VALUE`` overrides.
        dataset: a registered dataset whose metadata names the classes (replaces DATASETS.TEST).
        confidence_threshold: sets MODEL.ROI_HEADS.SCORE_THRESH_TEST and
            MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH when given.
    Raises:
        ValueError: a bad key or value, naming it; the dataset is not registered.
    """
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, resolve_config_file(config_file))
    merge_config_list(cfg, opts)
    cfg.DATASETS.TRAIN = ()  # not used for prediction; its dataset may not be registered here
    if dataset is not None:
        cfg.DATASETS.TEST = (dataset,)
    if confidence_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    _check_prediction_dataset(cfg, dataset is not None)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def _check_prediction_dataset(cfg: CfgNode, from_flag: bool) -> None:
    source = "--dataset" if from_flag else "Config key DATASETS.TEST"
    if not cfg.DATASETS.TEST:
        raise ValueError(
            "Config key DATASETS.TEST is empty, so no dataset metadata names the classes; pass "
            "--dataset NAME (a registered dataset, e.g. registered by --import MODULE)"
        )
    name = cfg.DATASETS.TEST[0]
    if name not in DatasetCatalog.list():
        raise ValueError(
            f"{source} names dataset '{name}', which is not registered; register it in a module "
            "passed with --import MODULE, or name a registered dataset with --dataset NAME"
        )
    metadata = MetadataCatalog.get(name)
    missing = [key for key in REQUIRED_METADATA if not hasattr(metadata, key)]
    if missing:
        raise ValueError(
            f"Dataset '{name}' ({source}) has no {', '.join(missing)} in its metadata; "
            "expected the separated panoptic metadata of register_coco_panoptic_dataset"
        )


def check_weights(cfg: CfgNode) -> None:
    """Resolve MODEL.WEIGHTS (downloading a URL), or warn loudly when it is empty.

    Raises:
        WeightsNotFoundError: the file does not exist or the URL cannot be fetched.
    """
    if cfg.MODEL.WEIGHTS:
        resolve_weights(cfg.MODEL.WEIGHTS)
    else:
        logger.warning(
            "MODEL.WEIGHTS is empty: predicting with RANDOMLY INITIALISED weights; the output is "
            "meaningless. Pass --opts MODEL.WEIGHTS path/or/url.pth"
        )

