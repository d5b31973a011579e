"""add_panoptic_fpn_ext_config: defaults, idempotence, and errors for misspelled keys."""

import pytest
from detectron2.config import get_cfg

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file


def _cfg():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    return cfg


def test_adds_plugin_keys_with_defaults():
    cfg = _cfg()
    assert cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME == "PanopticHeuristicCombiner"
    assert cfg.PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS == []
    # Keys shared with Detectron2 keep Detectron2's (= the paper's) defaults.
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 128
    assert cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE == 4
    assert cfg.MODEL.SEM_SEG_HEAD.NORM == "GN"
    assert cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT == 1.0


def test_idempotent():
    cfg = _cfg()
    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "Custom"
    before = cfg.dump()
    add_panoptic_fpn_ext_config(cfg)  # a second project calling it must not fail or reset values
    assert cfg.dump() == before


@pytest.mark.parametrize(
    "yaml_text, bad_key",
    [
        (
            "MODEL:\n  PANOPTIC_FPN_EXT:\n    COMBINER_NAM: X\n",
            "MODEL.PANOPTIC_FPN_EXT.COMBINER_NAM",
        ),
        (
            "PANOPTIC_FPN_EXT:\n  EVAL:\n    EXPORT_FORMAT: []\n",
            "PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMAT",
        ),
    ],
)
def test_misspelled_key_names_file_and_key(tmp_path, yaml_text, bad_key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError) as err:
        merge_config_file(_cfg(), str(path))
    assert str(path) in str(err.value) and bad_key in str(err.value)


def test_wrong_type_names_file(tmp_path):
    path = tmp_path / "bad_type.yaml"
    path.write_text("PANOPTIC_FPN_EXT:\n  EVAL:\n    INSTANCE_AP: [1, 2]\n")
    with pytest.raises(ValueError, match="bad_type.yaml"):
        merge_config_file(_cfg(), str(path))
