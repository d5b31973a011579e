"""panoptic_fpn_ext.model_zoo: configs by name, devices, Detectron2 zoo weights."""

import os

import pytest
import torch

from panoptic_fpn_ext import model_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50 = "COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml"


def test_config_file_by_name_is_the_repository_file_in_a_checkout():
    path = model_zoo.get_config_file(R50)
    assert os.path.samefile(path, os.path.join(ROOT, "configs", R50))


def test_unknown_name_lists_the_available_configs():
    with pytest.raises(ValueError, match="quick_start/panoptic_fpn_ext_R_18_shapes.yaml") as error:
        model_zoo.get_config_file("COCO-PanopticSegmentation/nope.yaml")
    assert "quick_start/panoptic_fpn_ext_R_18_shapes.py" in str(error.value)
    assert "common/" not in str(error.value) and "Base-" not in str(error.value)


def test_get_cfg_is_detectron2s_with_the_plugin_keys_and_takes_a_plugin_yaml():
    from detectron2.config import get_cfg

    from panoptic_fpn_ext import add_panoptic_fpn_ext_config

    cfg, expected = model_zoo.get_cfg(), get_cfg()
    add_panoptic_fpn_ext_config(expected)
    assert cfg == expected
    cfg.merge_from_file(model_zoo.get_config_file(R50))
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt"


def test_resolve_takes_a_path_then_a_name_and_names_both_when_neither(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("_BASE_: x\n")
    assert model_zoo.resolve_config_file(str(own)) == str(own)
    assert os.path.samefile(model_zoo.resolve_config_file(R50), os.path.join(ROOT, "configs", R50))
    with pytest.raises(ValueError, match=r"'missing.yaml' does not exist, and .* not one of"):
        model_zoo.resolve_config_file("missing.yaml")


@pytest.mark.parametrize("cuda", [False, True])
def test_get_config_sets_cpu_only_without_cuda(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = model_zoo.get_config(R50)
    assert cfg.MODEL.DEVICE == ("cuda" if cuda else "cpu")
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt"
    assert cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME == "PanopticHeuristicCombiner"
    lazy = model_zoo.get_config(R50.replace(".yaml", ".py"))
    assert lazy.train.device == ("cuda" if cuda else "cpu")


def test_trained_weights_are_detectron2_zoo_panoptic_fpn_of_the_same_architecture():
    cfg = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_ext_R_101_3x.yaml", True)
    suffix = "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x/139514519/model_final_cafdb1.pkl"
    assert cfg.MODEL.WEIGHTS.endswith(suffix)
    with pytest.raises(ValueError, match="No trained weights for 'quick_start"):
        model_zoo.get_config("quick_start/panoptic_fpn_ext_R_18_shapes.yaml", trained=True)
