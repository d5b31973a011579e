# COCO panoptic, R50-FPN, 1x schedule: the LazyConfig twin of panoptic_fpn_ext_R_50_1x.yaml, for
# Detectron2's tools/lazyconfig_train_net.py. Detectron2's common/models/panoptic_fpn.py with the
# plugin's meta-architecture, semantic head and combiner, the plugin's COCO panoptic datasets
# (read straight from the panoptic PNGs + JSON by PanopticDatasetMapper) and its PQ evaluator.
# The memory layout is the PanopticFPNExt class default.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.model_zoo import get_config
from omegaconf import OmegaConf

from panoptic_fpn_ext import (
    PanopticDatasetMapper,
    PanopticFPNExt,
    PanopticFPNExtSemSegHead,
    PanopticQualityEvaluator,
)
from panoptic_fpn_ext.modeling import PanopticHeuristicCombiner

model = get_config("common/models/panoptic_fpn.py").model
model._target_ = PanopticFPNExt
model.sem_seg_head._target_ = PanopticFPNExtSemSegHead
model.backbone.bottom_up.freeze_at = 2
# Detectron2's MODEL.PANOPTIC_FPN.COMBINE defaults.
model.combiner = L(PanopticHeuristicCombiner)(
    overlap_threshold=0.5, stuff_area_limit=4096, instances_score_threshold=0.5
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names="panoptic_fpn_ext_coco_2017_train", filter_empty=False
    ),
    mapper=L(PanopticDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        ignore_value=255,
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names="panoptic_fpn_ext_coco_2017_val", filter_empty=False
    ),
    mapper=L(PanopticDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(PanopticQualityEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
