# The data of Base-PanopticFPNExt.yaml for LazyConfigs: the plugin's COCO 2017 panoptic datasets,
# read from the panoptic PNGs + JSON by PanopticDatasetMapper, checked against the model's class
# counts and every record's files checked when the loaders are built (checked_dataset_dicts), and
# the evaluators of the YAML route (PQ, mIoU, box/mask AP) with the plugin's default settings.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from omegaconf import OmegaConf

from panoptic_fpn_ext import PanopticDatasetMapper
from panoptic_fpn_ext.evaluation import evaluator_options, panoptic_fpn_evaluators
from panoptic_fpn_ext.model_zoo import get_cfg
from panoptic_fpn_ext.model_zoo.lazy import checked_dataset_dicts

_defaults = get_cfg()

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(checked_dataset_dicts)(
        names="panoptic_fpn_ext_coco_2017_train",
        sem_seg_num_classes="${model.sem_seg_head.num_classes}",
        roi_heads_num_classes="${model.roi_heads.num_classes}",
        semantic_target=_defaults.PANOPTIC_FPN_EXT.SEMANTIC_TARGET,
        filter_empty=False,  # images with only stuff still train the semantic branch
        data_check=_defaults.PANOPTIC_FPN_EXT.DATA_CHECK,  # every record's files, at load
    ),
    mapper=L(PanopticDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                max_size=_defaults.INPUT.MAX_SIZE_TRAIN,
                sample_style=_defaults.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            ),
            L(T.RandomFlip)(horizontal=True, vertical=False),
        ],
        image_format=_defaults.INPUT.FORMAT,
        ignore_value="${model.sem_seg_head.ignore_value}",
        num_stuff_classes=0,  # Panoptic FPN's semantic target: 0 = things, stuff 1..S
        compact_sem_seg=True,  # uint8 labels, widened by PanopticFPNExt on its device
    ),
    total_batch_size=16,
    num_workers=_defaults.DATALOADER.NUM_WORKERS,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(checked_dataset_dicts)(
        names="panoptic_fpn_ext_coco_2017_val",
        sem_seg_num_classes="${...train.dataset.sem_seg_num_classes}",
        roi_heads_num_classes="${...train.dataset.roi_heads_num_classes}",
        semantic_target="${...train.dataset.semantic_target}",
        filter_empty=False,
        data_check="${...train.dataset.data_check}",
    ),
    mapper=L(PanopticDatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=_defaults.INPUT.MIN_SIZE_TEST,
                max_size=_defaults.INPUT.MAX_SIZE_TEST,
                sample_style="choice",
            )
        ],
        image_format="${...train.mapper.image_format}",
        ignore_value="${...train.mapper.ignore_value}",
        num_stuff_classes="${...train.mapper.num_stuff_classes}",
        compact_sem_seg="${...train.mapper.compact_sem_seg}",
    ),
    num_workers="${..train.num_workers}",
)
dataloader.evaluator = L(panoptic_fpn_evaluators)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    **dict(evaluator_options(_defaults), mask_on=True),
)
