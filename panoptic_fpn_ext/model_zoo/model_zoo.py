"""The plugin's configs by name, with ``detectron2.model_zoo``'s API."""

import os
from typing import List, Union

import torch
from detectron2.config import CfgNode, LazyConfig
from detectron2.config import get_cfg as get_detectron2_cfg
from omegaconf import DictConfig

from ..config import add_panoptic_fpn_ext_config, merge_config_file

__all__ = ["get_cfg", "get_checkpoint_url", "get_config", "get_config_file", "resolve_config_file"]

_PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_REPOSITORY_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)
COMMON = "common"  # the folder of the LazyConfigs' shared parts
# Configs whose model is Detectron2's model-zoo PanopticFPN (same name without "_ext"): those
# weights load unchanged.
_WITH_DETECTRON2_WEIGHTS = (
    "COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x",
    "COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_3x",
    "COCO-PanopticSegmentation/panoptic_fpn_ext_R_101_3x",
)


def _configs_dir() -> str:
    """The installed package's ``model_zoo/configs``, else the source checkout's ``configs/``."""
    return _PACKAGE_CONFIGS if os.path.isdir(_PACKAGE_CONFIGS) else _REPOSITORY_CONFIGS


def _available() -> List[str]:
    """The configs to name: not the bases (``Base-*.yaml``, the LazyConfigs' ``common/``)."""
    root = _configs_dir()
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith((".yaml", ".py"))
        and not name.startswith("Base")
        and os.path.relpath(folder, root).split(os.sep)[0] != COMMON
    )


def get_cfg() -> CfgNode:
    """Detectron2's ``get_cfg()`` plus the plugin's keys, with their defaults.

    The config to merge one of the plugin's YAMLs into: Detectron2's own ``get_cfg()`` has no
    ``MODEL.PANOPTIC_FPN_EXT`` / ``PANOPTIC_FPN_EXT``, and its ``merge_from_file`` then fails with
    ``KeyError: Non-existent config key``::

        cfg = panoptic_fpn_ext.model_zoo.get_cfg()
        cfg.merge_from_file(panoptic_fpn_ext.model_zoo.get_config_file(name))
    """
    cfg = get_detectron2_cfg()
    add_panoptic_fpn_ext_config(cfg)
    return cfg


def get_config_file(config_path: str) -> str:
    """The real path of one of the plugin's configs.

    Merge a YAML into :func:`get_cfg` (not Detectron2's ``get_cfg()``, which lacks the plugin's
    keys), or take :func:`get_config`, which does both.

    Args:
        config_path: relative to the repository's ``configs/``, e.g.
            ``"COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"``.
    Raises:
        ValueError: no such config; the message lists the available ones.
    """
    path = os.path.join(_configs_dir(), config_path)
    if not os.path.isfile(path):
        raise ValueError(
            f"{config_path!r} is not one of panoptic_fpn_ext's configs (looked in "
            f"{_configs_dir()}); available: {_available()}"
        )
    return path


def resolve_config_file(path_or_name: str) -> str:
    """``path_or_name`` if such a file exists, else the plugin's config of that name.

    Raises:
        ValueError: neither a file nor a config of the plugin; the message says both.
    """
    if os.path.isfile(path_or_name):
        return path_or_name
    try:
        return get_config_file(path_or_name)
    except ValueError as e:
        raise ValueError(f"Config file {path_or_name!r} does not exist, and {e}") from e


def get_checkpoint_url(config_path: str) -> str:
    """Detectron2's model-zoo weights for the model of a COCO config (they load unchanged).

    Raises:
        ValueError: the config has no published weights.
    """
    name = os.path.splitext(config_path)[0]
    if name not in _WITH_DETECTRON2_WEIGHTS:
        raise ValueError(
            f"No trained weights for {config_path!r}; configs with Detectron2 model-zoo weights: "
            f"{list(_WITH_DETECTRON2_WEIGHTS)}"
        )
    from detectron2 import model_zoo  # imports pkg_resources: only when weights are asked for

    detectron2_name = name.replace("panoptic_fpn_ext_", "panoptic_fpn_")
    return model_zoo.get_checkpoint_url(detectron2_name + ".yaml")


def get_config(config_path: str, trained: bool = False) -> Union[CfgNode, DictConfig]:
    """A config of the plugin, ready for ``build_model`` / ``instantiate``.

    For a ``.yaml`` config: Detectron2's defaults (``get_cfg()``) plus the plugin's keys
    (:func:`add_panoptic_fpn_ext_config`) merged with the file. For a ``.py`` LazyConfig: the
    ``LazyConfig.load`` result (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``,
    ``train``).

    On a machine without CUDA the device is set to ``"cpu"`` (``MODEL.DEVICE``, or
    ``train.device`` of a LazyConfig), so that the model builds there; where CUDA is available
    the file's device is kept (Detectron2's default is ``"cuda"``).

    Args:
        config_path: see :func:`get_config_file`.
        trained: set the weights (``MODEL.WEIGHTS`` or ``train.init_checkpoint``) to Detectron2's
            model-zoo PanopticFPN weights of this architecture (see :func:`get_checkpoint_url`);
            False keeps the file's (ImageNet-pretrained backbone, or none).
    """
    path = get_config_file(config_path)
    cpu_only = not torch.cuda.is_available()
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        if cpu_only:
            cfg.train.device = "cpu"
        if trained:
            cfg.train.init_checkpoint = get_checkpoint_url(config_path)
        return cfg
    cfg = get_cfg()
    merge_config_file(cfg, path)
    if cpu_only:
        cfg.MODEL.DEVICE = "cpu"
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg
