# COCO panoptic, R50-FPN, 3x schedule: the LazyConfig twin of panoptic_fpn_ext_R_50_3x.yaml.
from ..common.schedule import multi_step_schedule
from .panoptic_fpn_ext_R_50_1x import dataloader, model, optimizer, train  # noqa: F401

lr_multiplier = multi_step_schedule(steps=(210000, 250000), max_iter=270000)
train.max_iter = 270000
