# COCO panoptic, R101-FPN, 3x schedule: the LazyConfig twin of panoptic_fpn_ext_R_101_3x.yaml.
from .panoptic_fpn_ext_R_50_3x import dataloader, lr_multiplier, model, optimizer, train  # noqa

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
