"""Panoptic Feature Pyramid Networks (Kirillov, Girshick, He, Dollar, 2019) as a Detectron2 plugin."""
from .config import add_panoptic_fpn_ext_config, merge_config_file, validate_config

__version__ = "0.1.0"
