"""Every YAML under configs/ loads, validates and builds its model; the predict tool's inputs."""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from panoptic_fpn_ext.tools.predict import build_cfg, list_images

CONFIGS = sorted(
    p for p in glob.glob("configs/**/*.yaml", recursive=True) if "Base-" not in os.path.basename(p)
)


def test_every_config_is_covered():
    assert len(CONFIGS) == 7


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_a_model(path):
    cfg = build_cfg(path, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert model.sem_seg_head.predictor.out_channels == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert all(p.device == torch.device("cpu") for p in model.parameters())


def test_list_images_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images([str(tmp_path / "nope")], None)
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images([str(tmp_path)], None)
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images([str(tmp_path)], 1) == [str(tmp_path / "a.jpg")]
