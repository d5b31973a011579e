# The paper's "Semantic FPN" alone on Cityscapes (19 classes), the LazyConfig twin of
# semantic_fpn_R_50.yaml: the panoptic model's backbone and semantic head in Detectron2's
# SemanticSegmentor, trained on all classes (stuff 0..10, then things 11..18: the trainIds).
from detectron2.config import LazyCall as L
from detectron2.modeling import SemanticSegmentor

from ..common.cityscapes import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from ..common.models.panoptic_fpn import model as _panoptic

model = L(SemanticSegmentor)(
    backbone=_panoptic.backbone,
    sem_seg_head=_panoptic.sem_seg_head,
    pixel_mean=_panoptic.pixel_mean,
    pixel_std=_panoptic.pixel_std,
)
model.sem_seg_head.num_classes = 19
model.sem_seg_head.loss_weight = 1.0
dataloader.train.dataset.roi_heads_num_classes = None  # the test loader's follow the train's
dataloader.train.dataset.semantic_target = "all_classes"
dataloader.train.mapper.num_stuff_classes = 11  # stuff labels 0..10, things from 11
dataloader.train.mapper.compact_sem_seg = False  # Detectron2's SemanticSegmentor takes int64
dataloader.evaluator.semantic_target = "all_classes"
dataloader.evaluator.mask_on = False
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
