# The optimizer and training settings of the YAML route for LazyConfigs: Detectron2's
# common/optim.py SGD (its get_cfg() defaults: momentum 0.9, weight decay 1e-4, none on norms)
# and common/train.py, with the evaluation period, checkpoint period and seed of get_cfg().
from detectron2.model_zoo import get_config

from panoptic_fpn_ext.model_zoo import get_cfg

_defaults = get_cfg()

optimizer = get_config("common/optim.py").SGD  # lr 0.02: Base-PanopticFPNExt.yaml's BASE_LR
train = get_config("common/train.py").train
train.eval_period = _defaults.TEST.EVAL_PERIOD  # 0: evaluate after the last iteration only
train.checkpointer.period = _defaults.SOLVER.CHECKPOINT_PERIOD
train.seed = _defaults.SEED
