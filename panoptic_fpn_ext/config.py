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

import difflib
import os
from typing import List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode as CN
from detectron2.utils.file_io import PathManager
from fvcore.common.config import BASE_KEY

__all__ = [
    "add_panoptic_fpn_ext_config",
    "merge_config_file",
    "check_class_counts",
    "check_num_classes",
    "merge_config_list",
    "require_plugin_keys",
    "validate_config",
]

EXPORT_FORMATS = ("coco", "cityscapes")
SEMANTIC_TARGETS = ("stuff_and_other", "all_classes")
DATA_CHECK_MODES = ("full", "headers", "off")
# Meta-architectures whose class counts check_class_counts compares with a dataset's metadata.
SEMANTIC_HEAD_ARCHITECTURES = ("PanopticFPNExt", "PanopticFPN", "SemanticSegmentor")
ROI_HEADS_ARCHITECTURES = ("PanopticFPNExt", "PanopticFPN", "GeneralizedRCNN")
# How to get a config with the plugin's keys, for errors about a config that lacks them.
PLUGIN_KEYS_HINT = (
    "start from panoptic_fpn_ext.model_zoo.get_cfg() (Detectron2's get_cfg() plus the plugin's "
    "keys) or call panoptic_fpn_ext.add_panoptic_fpn_ext_config(cfg) before merging a "
    "panoptic_fpn_ext config"
)


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
    # Memory layout of the weights and activations: "channels_last" (NHWC; the same network and
    # weights, convolutions take other kernels, results differ from NCHW only by float
    # rounding), "contiguous" (Detectron2's NCHW: outputs bit-identical to Detectron2's
    # PanopticFPN with the same weights), or "auto": per the model's device (MODEL.DEVICE, or
    # wherever model.to() moves it), the layout measured faster there (BENCHMARKS.md):
    # channels-last on CPU (R50-FPN inference ~3% faster than NCHW; training at parity),
    # contiguous on CUDA (channels-last was 1.12x inference time, 1.04x training memory on an
    # H200). The former CHANNELS_LAST key (True/False) is renamed: channels_last/contiguous.
    cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = "auto"
    cfg.register_renamed_key(
        "MODEL.PANOPTIC_FPN_EXT.CHANNELS_LAST",
        "MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT",
        message='CHANNELS_LAST True is MEMORY_FORMAT "channels_last", False is "contiguous"; '
        'the default is "auto" (channels-last on CPU, contiguous on CUDA).',
    )
    # Run the network at inference under torch.autocast in this dtype on the model's device:
    # "" (float32, the default), "float16" or "bfloat16" (both CPU and CUDA). Postprocessing
    # still gets float32 raw outputs, and outputs keep their dtypes. PQ on the shapes set and
    # speed: `python benchmarks/bench_autocast.py` (BENCHMARKS.md). Training precision is
    # Detectron2's SOLVER.AMP.
    cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = ""

    cfg.PANOPTIC_FPN_EXT = CN()
    # Semantic target made by PanopticDatasetMapper: "stuff_and_other" for Panoptic FPN (0 = every
    # thing pixel, stuff 1..S; Detectron2's order) or "all_classes" for a semantic-only model
    # (stuff 0..S-1 then things S..S+T-1; with MODEL.META_ARCHITECTURE "SemanticSegmentor").
    cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET = "stuff_and_other"
    # Check every record of the plugin's datasets when they are first loaded for training or
    # evaluation, so that a bad file stops the run before it starts: "full" (files exist, image
    # and PNG sizes agree with the JSON, every PNG decodes and holds exactly the JSON's segment
    # ids, every image file is complete), "headers" (existence and sizes only) or "off".
    # Verdicts are cached per file in $XDG_CACHE_HOME (~/.cache): a restart checks only what
    # changed. Speed: `python benchmarks/bench_loader.py` (BENCHMARKS.md).
    cfg.PANOPTIC_FPN_EXT.DATA_CHECK = "full"
    cfg.PANOPTIC_FPN_EXT.EVAL = CN()
    # Prediction files to write next to the metrics, each atomically: any of "coco" (COCO
    # panoptic JSON + PNGs, for the COCO test server) and "cityscapes" (Cityscapes panoptic format).
    cfg.PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS = []
    # Also run Detectron2's COCOEvaluator (box/mask AP) when the dataset has instance annotations.
    cfg.PANOPTIC_FPN_EXT.EVAL.INSTANCE_AP = True
    # Also run Detectron2's SemSegEvaluator (mIoU over stuff classes + "things").
    cfg.PANOPTIC_FPN_EXT.EVAL.SEMANTIC_MIOU = True
    # Threads of the PQ evaluator, each counting whole images; 0 = one per CPU core the process
    # may use (its affinity mask: taskset, a container's cpuset).
    cfg.PANOPTIC_FPN_EXT.EVAL.NUM_THREADS = 0


def merge_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)``, with errors that name the file and the offending key.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a ``_BASE_`` it (or one of its bases)
            names does not; the message names the referencing file and the missing base.
        ValueError: an unknown key or a value of the wrong type, naming the file and the key.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Config file {path} does not exist")
    try:
        cfg.merge_from_file(path)
    except FileNotFoundError as e:
        error = _missing_base_error(path)
        if error is None:
            raise
        raise error from e
    except (KeyError, ValueError, TypeError) as e:
        hint = ""
        if "PANOPTIC_FPN_EXT" in str(e) and "PANOPTIC_FPN_EXT" not in cfg:
            hint = f"; the config has none of panoptic_fpn_ext's keys: {PLUGIN_KEYS_HINT}"
        raise ValueError(f"Config file {path}: {e}{hint}") from e


def _missing_base_error(path: str) -> Optional[FileNotFoundError]:
    """The error for the first ``_BASE_`` in the chain from ``path`` that does not exist.

    Bases are resolved as fvcore's ``CfgNode.load_yaml_with_base`` does: relative to the file
    that names them, ``~`` expanded; a list of bases is followed in order.
    """
    with PathManager.open(path, encoding="utf-8") as f:
        bases = (yaml.safe_load(f) or {}).get(BASE_KEY, [])
    for base in [bases] if isinstance(bases, str) else bases:
        resolved = os.path.expanduser(base)
        if resolved.startswith(("https://", "http://")):
            continue  # fetched by PathManager; its own error names the URL
        if not resolved.startswith("/"):
            resolved = os.path.join(os.path.dirname(path), resolved)
        if not PathManager.isfile(resolved):
            return FileNotFoundError(
                f"Config file {path}: its {BASE_KEY} {base!r} ({resolved}) does not exist"
            )
        error = _missing_base_error(resolved)
        if error is not None:
            return error
    return None


def merge_config_list(cfg: CN, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)`` (command-line ``KEY VALUE`` pairs), with the same errors as
    :func:`merge_config_file`: a ``ValueError`` naming the key (and close matches of an unknown
    one) where yacs raises a bare ``AssertionError: Non-existent key``.
    """
    if len(opts) % 2:
        raise ValueError(
            f"Command-line config overrides must be KEY VALUE pairs; got an odd number of "
            f"items: {list(opts)}"
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        known = cfg.key_is_deprecated(key) or cfg.key_is_renamed(key) or _has_key(cfg, key)
        if not known:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"Command-line override: config key {key} does not exist{hint}")
        try:
            cfg.merge_from_list([key, value])
        except (AssertionError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"Command-line override {key} {value!r}: {e}") from e


def _has_key(cfg: CN, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            return False
        node = node[part]
    return True


def _all_keys(node: CN, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        keys += _all_keys(value, f"{prefix}{name}.") if isinstance(value, CN) else [prefix + name]
    return keys


def _check_range(cfg: CN, key: str, low: float, high: float) -> None:
    value = _lookup(cfg, key)
    if not low <= value <= high:
        raise ValueError(f"Config key {key} = {value!r} is out of range: expected {low} to {high}")


def _check_choice(cfg: CN, key: str, choices: tuple) -> None:
    value = _lookup(cfg, key)
    if value not in choices:
        raise ValueError(f"Config key {key} = {value!r}; expected one of {choices}")


def _lookup(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_datasets(cfg: CN, key: str) -> None:
    from detectron2.data import DatasetCatalog  # registered datasets, known only at call time

    known = set(DatasetCatalog.list())
    for name in _lookup(cfg, key):
        if name not in known:
            raise ValueError(
                f"Config key {key} names dataset '{name}', which is not registered. "
                f"Registered panoptic_fpn_ext datasets: "
                f"{sorted(n for n in known if n.startswith('panoptic_fpn_ext_'))}"
            )


def validate_config(cfg: CN) -> None:
    """Check value ranges and cross-key consistency before anything is built or loaded.

    Unknown keys and wrong types are already rejected by :func:`merge_config_file` and
    :func:`merge_config_list`; this catches values of the right type that cannot work, including
    class counts that disagree with the datasets' metadata (:func:`check_class_counts`). Every
    error names its config key.
    """
    require_plugin_keys(cfg)
    _check_range(cfg, "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 0.0, 1.0)
    _check_range(cfg, "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.0, 1.0)
    _check_range(cfg, "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 0, float("inf"))
    _check_range(cfg, "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", 0.0, float("inf"))
    _check_range(cfg, "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 0.0, float("inf"))
    _check_range(cfg, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1, float("inf"))
    _check_range(cfg, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 0, 255)
    _check_range(cfg, "SOLVER.BASE_LR", 0.0, float("inf"))
    _check_range(cfg, "SOLVER.IMS_PER_BATCH", 1, float("inf"))
    _check_choice(cfg, "PANOPTIC_FPN_EXT.SEMANTIC_TARGET", SEMANTIC_TARGETS)
    _check_choice(cfg, "PANOPTIC_FPN_EXT.DATA_CHECK", DATA_CHECK_MODES)
    for fmt in cfg.PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(
                f"Config key PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS has unknown format {fmt!r}; "
                f"expected any of {EXPORT_FORMATS}"
            )
    from .modeling import PANOPTIC_COMBINER_REGISTRY  # the registry is filled at import time
    from .modeling.device_settings import AUTOCAST_DTYPES, MEMORY_FORMATS

    name = cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME
    if name not in PANOPTIC_COMBINER_REGISTRY:
        registered = sorted(k for k, _ in PANOPTIC_COMBINER_REGISTRY)
        raise ValueError(
            f"Config key MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = {name!r} is not in "
            f"PANOPTIC_COMBINER_REGISTRY; registered: {registered}"
        )
    _check_choice(cfg, "MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", MEMORY_FORMATS)
    _check_choice(cfg, "MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST", tuple(AUTOCAST_DTYPES))
    _check_device(cfg)
    _check_datasets(cfg, "DATASETS.TRAIN")
    _check_datasets(cfg, "DATASETS.TEST")
    check_class_counts(cfg, *cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)


def check_class_counts(cfg: CN, *dataset_names: str) -> None:
    """The model's class counts must match the classes of registered datasets' metadata.

    * ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (models with a semantic head): see
      :func:`check_num_classes`, with ``PANOPTIC_FPN_EXT.SEMANTIC_TARGET``;
    * ``MODEL.ROI_HEADS.NUM_CLASSES`` (models with RoI heads): ``len(thing_classes)``.

    Called wherever a config meets a dataset: :func:`validate_config` (``train_net.py``, the
    predict tool), ``PanopticDatasetMapper.from_config`` and the evaluator builders (Detectron2's
    ``DefaultTrainer`` with the plugin's two hooks).

    Raises:
        ValueError: a count differs; names the key, its value, the dataset and the value it
            needs. The config lacks the plugin's keys (:func:`require_plugin_keys`).
    """
    require_plugin_keys(cfg)
    architecture = cfg.MODEL.META_ARCHITECTURE
    semantic = things = None
    if architecture in SEMANTIC_HEAD_ARCHITECTURES:
        semantic = ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if architecture in ROI_HEADS_ARCHITECTURES:
        things = ("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    for name in dataset_names:
        check_num_classes(name, semantic, things, cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET)


def check_num_classes(
    dataset_name: str,
    semantic: Optional[Tuple[str, int]] = None,
    things: Optional[Tuple[str, int]] = None,
    semantic_target: str = "stuff_and_other",
) -> None:
    """A model's class counts against a registered dataset's ``stuff_classes``/``thing_classes``.

    The config-free core of :func:`check_class_counts`, also what the plugin's LazyConfigs call
    (the model's ``num_classes`` there has no config key).

    Args:
        dataset_name: a registered dataset; one whose metadata has no ``stuff_classes`` /
            ``thing_classes`` is not checked for that count.
        semantic: (name of the setting, value) of the semantic head's class count, or None for a
            model without one. It must be ``len(stuff_classes)`` for Panoptic FPN's target (the
            stuff classes + "things", which ``stuff_classes`` lists first), or stuff + thing
            classes for the "all_classes" target.
        things: (name of the setting, value) of the RoI heads' class count, or None; it must be
            ``len(thing_classes)``.
        semantic_target: "stuff_and_other" or "all_classes" (``PANOPTIC_FPN_EXT.SEMANTIC_TARGET``).
    Raises:
        ValueError: a count differs; names the setting, its value, the dataset and the value it
            needs.
    """
    from detectron2.data import MetadataCatalog  # registered datasets, known only at call time

    metadata = MetadataCatalog.get(dataset_name)
    stuff = metadata.get("stuff_classes")
    thing_classes = metadata.get("thing_classes")
    if semantic is not None and stuff is not None:
        if semantic_target == "all_classes":
            expected = len(stuff) - 1 + len(thing_classes or ())
            reason = f"{len(stuff) - 1} stuff + {len(thing_classes or ())} thing classes"
        else:
            expected = len(stuff)
            reason = f"{len(stuff) - 1} stuff classes + 1 'things'"
        reason += f" for the semantic target {semantic_target!r}"
        _check_count(*semantic, expected, dataset_name, reason)
    if things is not None and thing_classes is not None:
        reason = f"its {len(thing_classes)} thing classes"
        _check_count(*things, len(thing_classes), dataset_name, reason)


def _check_count(key: str, value: int, expected: int, dataset_name: str, reason: str) -> None:
    if value != expected:
        raise ValueError(
            f"Config key {key} = {value}, but dataset '{dataset_name}' needs {expected} "
            f"({reason})"
        )


def require_plugin_keys(cfg: CN) -> None:
    """Raise a ``ValueError`` saying how to add the plugin's keys when ``cfg`` lacks them.

    Detectron2's ``get_cfg()`` has none of ``MODEL.PANOPTIC_FPN_EXT`` / ``PANOPTIC_FPN_EXT``.
    """
    if "PANOPTIC_FPN_EXT" not in cfg or "PANOPTIC_FPN_EXT" not in cfg.MODEL:
        raise ValueError(f"This config has none of panoptic_fpn_ext's keys: {PLUGIN_KEYS_HINT}")


def _check_device(cfg: CN) -> None:
    """MODEL.DEVICE must exist here, and AMP needs CUDA (Detectron2's AMPTrainer asserts it)."""
    import torch

    try:
        device = torch.device(cfg.MODEL.DEVICE)
    except RuntimeError as e:
        raise ValueError(f"Config key MODEL.DEVICE = {cfg.MODEL.DEVICE!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Config key MODEL.DEVICE = {cfg.MODEL.DEVICE!r}, but this machine has no CUDA device; "
            f"use MODEL.DEVICE cpu"
        )
    if cfg.SOLVER.AMP.ENABLED and device.type != "cuda":
        raise ValueError(
            f"Config key SOLVER.AMP.ENABLED = True needs MODEL.DEVICE cuda (Detectron2's "
            f"AMPTrainer runs on CUDA only); got MODEL.DEVICE = {cfg.MODEL.DEVICE!r}"
        )
