# The Cityscapes recipe of Base-PanopticFPNExt-Cityscapes.yaml (the paper's) for LazyConfigs:
# 32 images per batch, each a random 512x1024 crop after rescaling by 0.5x-2.0x (shorter side
# 512-2048 for 1024x2048 images), 65k iterations, LR 0.01 divided by 10 at 40k and 55k,
# evaluation every 5k iterations; the plugin's Cityscapes panoptic datasets.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .data.coco_panoptic import dataloader
from .schedule import multi_step_schedule
from .train import optimizer, train

dataloader.train.dataset.names = "panoptic_fpn_ext_cityscapes_fine_panoptic_train"
dataloader.test.dataset.names = "panoptic_fpn_ext_cityscapes_fine_panoptic_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=tuple(range(512, 2049, 128)), max_size=4096, sample_style="choice"
    ),
    L(T.RandomCrop)(crop_type="absolute", crop_size=(512, 1024)),
    L(T.RandomFlip)(horizontal=True, vertical=False),
]
dataloader.test.mapper.augmentations[0].short_edge_length = 1024
dataloader.test.mapper.augmentations[0].max_size = 2048
dataloader.train.total_batch_size = 32

optimizer.lr = 0.01
lr_multiplier = multi_step_schedule(steps=(40000, 55000), max_iter=65000)
train.max_iter = 65000
train.eval_period = 5000
