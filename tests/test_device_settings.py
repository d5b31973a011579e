"""MEMORY_FORMAT and INFERENCE_AUTOCAST: resolution per device, and errors naming the key."""

import pytest
import torch
from detectron2.config import get_cfg

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file, validate_config
from panoptic_fpn_ext.modeling.device_settings import autocast_dtype, resolve_memory_format

TINY = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"


def _cfg():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    return cfg


def test_defaults():
    cfg = _cfg()
    assert cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT == "auto"
    assert cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST == ""


@pytest.mark.parametrize(
    "setting, device, expected",
    [
        ("auto", "cpu", torch.channels_last),
        ("auto", "cuda", torch.contiguous_format),
        ("auto", "cuda:1", torch.contiguous_format),
        ("auto", torch.device("cpu"), torch.channels_last),
        ("channels_last", "cuda", torch.channels_last),
        ("contiguous", "cpu", torch.contiguous_format),
    ],
)
def test_memory_format_resolves_per_device(setting, device, expected):
    assert resolve_memory_format(setting, device) == expected


@pytest.mark.parametrize(
    "setting, device, expected",
    [
        ("auto", "cpu", torch.contiguous_format),
        ("auto", "cuda", torch.contiguous_format),
        ("channels_last", "cpu", torch.channels_last),
        ("channels_last", "cuda", torch.channels_last),
    ],
)
def test_memory_format_in_training(setting, device, expected):
    assert resolve_memory_format(setting, device, training=True) == expected


@pytest.mark.parametrize(
    "setting, expected", [("", None), ("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_autocast_dtypes(setting, expected):
    assert autocast_dtype(setting) == expected


@pytest.mark.parametrize("old_value", ["True", "False"])
def test_old_channels_last_key_names_its_replacement(tmp_path, old_value):
    path = tmp_path / "old.yaml"
    path.write_text(f"MODEL:\n  PANOPTIC_FPN_EXT:\n    CHANNELS_LAST: {old_value}\n")
    with pytest.raises(ValueError) as err:
        merge_config_file(_cfg(), str(path))
    message = str(err.value)
    assert str(path) in message and "MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT" in message
    assert '"channels_last"' in message and '"contiguous"' in message


def test_old_channels_last_key_on_the_command_line_names_its_replacement():
    with pytest.raises(KeyError, match="MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT"):
        _cfg().merge_from_list(["MODEL.PANOPTIC_FPN_EXT.CHANNELS_LAST", "False"])


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "nhwc"),
        ("MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST", "fp16"),
        ("MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST", "float32"),
    ],
)
def test_validate_config_names_the_key(key, value):
    cfg = _cfg()
    merge_config_file(cfg, TINY)
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=f"Config key {key} = '{value}'; expected one of"):
        validate_config(cfg)


@pytest.mark.parametrize("memory_format", ["auto", "channels_last", "contiguous"])
@pytest.mark.parametrize("autocast", ["", "float16", "bfloat16"])
def test_every_accepted_value_validates(memory_format, autocast):
    cfg = _cfg()
    merge_config_file(cfg, TINY)
    cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = memory_format
    cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST = autocast
    validate_config(cfg)
