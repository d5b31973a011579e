# Cityscapes panoptic, R101-FPN, the paper's recipe: the LazyConfig twin of
# panoptic_fpn_ext_R_101.yaml.
from .panoptic_fpn_ext_R_50 import dataloader, lr_multiplier, model, optimizer, train  # noqa

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
