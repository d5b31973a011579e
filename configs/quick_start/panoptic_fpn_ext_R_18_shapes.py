# Quick start, the LazyConfig twin of panoptic_fpn_ext_R_18_shapes.yaml: trains from scratch on
# the bundled synthetic "shapes" set (generated on first use under $DETECTRON2_DATASETS) in a few
# minutes on 2 CPU cores, with no overrides:
#   python tools/lazyconfig_train_net.py --config-file <this file>
# ResNet-18 with (synchronised) BatchNorm, 64-channel FPN and semantic branch, lighter RoI heads,
# anchors and stuff-area limit scaled to 128 px images. Writes to output/quick_start_lazy (the YAML
# route's folder is output/quick_start).
from detectron2.layers import ShapeSpec

from ..common.data.coco_panoptic import dataloader
from ..common.models.panoptic_fpn import model
from ..common.schedule import multi_step_schedule
from ..common.train import optimizer, train  # noqa: F401

NORM = "naiveSyncBN"  # BatchNorm in one process; statistics averaged across several
CHANNELS = 64

_bottom_up = model.backbone.bottom_up
_bottom_up.freeze_at = 0
_bottom_up.stem.norm = NORM
_bottom_up.stages.depth = 18
_bottom_up.stages.norm = NORM
del _bottom_up.stages.stride_in_1x1  # ResNet-18's BasicBlock has no 1x1 convolutions
model.backbone.out_channels = CHANNELS
_rpn = model.proposal_generator
_rpn.head.in_channels = CHANNELS
_rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
_rpn.pre_nms_topk = (500, 500)
_rpn.post_nms_topk = (100, 100)
_roi_heads = model.roi_heads
_roi_heads.num_classes = 3
_roi_heads.batch_size_per_image = 64
_roi_heads.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
_roi_heads.box_head.fc_dims = [256, 256]
_roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_roi_heads.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
_roi_heads.mask_head.conv_dims = [CHANNELS] * 3  # 2 convolutions + the deconvolution
model.sem_seg_head.num_classes = 4  # 3 stuff classes + "other"
model.sem_seg_head.conv_dims = CHANNELS
model.combiner.stuff_area_limit = 64  # 4096 px at COCO scale: the same share of 128x128

dataloader.train.dataset.names = "panoptic_fpn_ext_shapes_train"
dataloader.test.dataset.names = "panoptic_fpn_ext_shapes_val"
dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.train.mapper.augmentations[0].max_size = 256
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 256
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1

lr_multiplier = multi_step_schedule(steps=(900,), max_iter=1100, warmup_iters=100)
train.update(
    max_iter=1100,
    init_checkpoint="",
    device="cpu",
    output_dir="output/quick_start_lazy",
    seed=0,
)
train.checkpointer.period = 500
