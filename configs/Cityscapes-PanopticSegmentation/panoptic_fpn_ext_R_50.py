# Cityscapes panoptic, R50-FPN, the paper's recipe: the LazyConfig twin of
# panoptic_fpn_ext_R_50.yaml.
from ..common.cityscapes import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from ..common.models.panoptic_fpn import model

model.roi_heads.num_classes = 8
model.sem_seg_head.num_classes = 12  # 11 stuff classes + "other"
model.sem_seg_head.loss_weight = 1.0  # this config's choice, not a value from the paper
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
