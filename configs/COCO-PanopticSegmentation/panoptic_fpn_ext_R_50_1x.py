# COCO panoptic, R50-FPN, 1x schedule: the LazyConfig twin of panoptic_fpn_ext_R_50_1x.yaml, for
# Detectron2's tools/lazyconfig_train_net.py (model, data and evaluators: configs/common/).
from ..common.data.coco_panoptic import dataloader  # noqa: F401
from ..common.models.panoptic_fpn import model  # noqa: F401
from ..common.schedule import multi_step_schedule
from ..common.train import optimizer, train  # noqa: F401

lr_multiplier = multi_step_schedule(steps=(60000, 80000), max_iter=90000)
train.max_iter = 90000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
