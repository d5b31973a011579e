# The plugin's Panoptic FPN (R50-FPN) for LazyConfigs: the model of Base-PanopticFPNExt.yaml.
# Detectron2's common/models/panoptic_fpn.py (whose values are its get_cfg() defaults) with the
# plugin's meta-architecture, semantic head and combiner; what the plugin adds takes the defaults
# of add_panoptic_fpn_ext_config, so both routes start from the same values.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from panoptic_fpn_ext import PanopticFPNExt, PanopticFPNExtSemSegHead
from panoptic_fpn_ext.model_zoo import get_cfg
from panoptic_fpn_ext.modeling import PanopticHeuristicCombiner

_defaults = get_cfg().MODEL

model = get_config("common/models/panoptic_fpn.py").model
model._target_ = PanopticFPNExt
model.sem_seg_head._target_ = PanopticFPNExtSemSegHead
model.backbone.bottom_up.freeze_at = _defaults.BACKBONE.FREEZE_AT
model.combiner = L(PanopticHeuristicCombiner)(
    overlap_threshold=_defaults.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH,
    stuff_area_limit=_defaults.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT,
    instances_score_threshold=_defaults.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH,
)
# Detectron2's PanopticFPN keeps these too; the combiner's values, as the YAML route gives them.
model.combine_overlap_thresh = "${.combiner.overlap_threshold}"
model.combine_stuff_area_thresh = "${.combiner.stuff_area_limit}"
model.combine_instances_score_thresh = "${.combiner.instances_score_threshold}"
model.memory_format = _defaults.PANOPTIC_FPN_EXT.MEMORY_FORMAT
model.inference_autocast = _defaults.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST
