# Detectron2's multi-step LR schedule with linear warm-up, as a LazyConfig: what the YAML route's
# SOLVER.{STEPS, MAX_ITER, GAMMA, WARMUP_ITERS, WARMUP_FACTOR, WARMUP_METHOD} give, with the
# defaults of get_cfg().
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from panoptic_fpn_ext.model_zoo import get_cfg

_defaults = get_cfg().SOLVER


def multi_step_schedule(steps, max_iter, warmup_iters=_defaults.WARMUP_ITERS):
    """The LR multiplier: x GAMMA at each of ``steps``, over ``max_iter`` iterations, after a
    linear warm-up of ``warmup_iters`` iterations from WARMUP_FACTOR."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[_defaults.GAMMA**k for k in range(len(steps) + 1)],
            milestones=[*steps, max_iter],
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method=_defaults.WARMUP_METHOD,
        warmup_factor=_defaults.WARMUP_FACTOR,
    )
