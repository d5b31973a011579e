"""The training loader lets its workers prepare two batches ahead."""

import pytest
from detectron2.config import get_cfg

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer
from panoptic_fpn_ext.engine.trainer import _prefetch_kwargs

TINY = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"


def _cfg(num_workers: int, batch: int, grouping: bool = True):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, TINY)
    cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    return cfg


@pytest.mark.parametrize(
    "num_workers, batch, grouping, expected",
    [
        (1, 4, True, {"prefetch_factor": 8}),  # the quick start: 8 images = 2 batches
        (4, 16, True, {"prefetch_factor": 8}),
        (4, 2, True, {"prefetch_factor": 2}),  # the DataLoader's default already suffices
        (1, 4, False, {"prefetch_factor": 2}),  # whole batches: 2 batches ahead by default
        (0, 4, True, {}),  # no workers: the DataLoader takes no prefetch_factor
    ],
)
def test_prefetch_factor_holds_two_batches(num_workers, batch, grouping, expected):
    assert _prefetch_kwargs(_cfg(num_workers, batch, grouping)) == expected


def test_train_loader_uses_the_prefetch_factor():
    loader = PanopticFPNExtTrainer.build_train_loader(_cfg(1, 4))
    assert loader.dataset.prefetch_factor == 8  # the DataLoader behind the grouping
