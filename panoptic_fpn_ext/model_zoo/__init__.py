"""The plugin's configs, found by name as with ``detectron2.model_zoo``.

Names are paths relative to the repository's ``configs/`` folder, e.g.
``"COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"``. A built wheel carries that folder
as ``panoptic_fpn_ext/model_zoo/configs`` (``setup.py`` links or copies it at build time, as
Detectron2's own ``setup.py`` does); a source checkout used in place reads ``configs/`` itself.
"""

from .model_zoo import (
    get_cfg,
    get_checkpoint_url,
    get_config,
    get_config_file,
    resolve_config_file,
)

__all__ = ["get_cfg", "get_checkpoint_url", "get_config", "get_config_file", "resolve_config_file"]
