"""How the network runs on its device: memory layout and inference precision.

Two settings of ``PanopticFPNExt`` (``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT`` and
``MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST``), parsed and resolved here by plain functions.
"""

from typing import Optional, Union

import torch

__all__ = [
    "AUTOCAST_DTYPES",
    "MEMORY_FORMATS",
    "autocast_dtype",
    "check_memory_format",
    "resolve_memory_format",
]

# "auto" picks per device and mode the layout measured faster there (BENCHMARKS.md):
# channels-last for inference on CPU (R50-FPN inference 0.86x vs 0.96x of Detectron2's time);
# contiguous (Detectron2's NCHW) in training on CPU (at 2 COCO-like images of 800x1067 a
# channels-last iteration took 1.42x Detectron2's time, a contiguous one 0.95x) and on CUDA,
# where channels-last cost 1.12x inference time and 1.04x training memory on an H200.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
_CHANNELS_LAST_DEVICES = ("cpu",)
# Autocast dtypes of INFERENCE_AUTOCAST; "" runs the network in float32.
AUTOCAST_DTYPES = {"": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_memory_format(setting: str, name: str = "memory_format") -> str:
    """Return ``setting`` if it is one of :data:`MEMORY_FORMATS`.

    Raises:
        ValueError: naming ``name`` (the argument or config key) and the accepted values.
    """
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"{name} = {setting!r}; expected one of {MEMORY_FORMATS}")
    return setting


def resolve_memory_format(
    setting: str, device: Union[str, torch.device], training: bool = False
) -> torch.memory_format:
    """The memory layout for a model on ``device``, in training or in inference.

    Args:
        setting: one of :data:`MEMORY_FORMATS`; "auto" gives ``torch.channels_last`` for
            inference on the device types in ``_CHANNELS_LAST_DEVICES`` (CPU) and
            ``torch.contiguous_format`` in training and elsewhere (CUDA and any other device,
            where it is Detectron2's layout).
        device: the model's device.
        training: whether the model is in training mode.
    """
    check_memory_format(setting)
    if setting == "auto":
        device_type = torch.device(device).type
        channels_last = device_type in _CHANNELS_LAST_DEVICES and not training
        setting = "channels_last" if channels_last else "contiguous"
    return torch.channels_last if setting == "channels_last" else torch.contiguous_format


def autocast_dtype(setting: str, name: str = "inference_autocast") -> Optional[torch.dtype]:
    """The dtype that ``setting`` ("", "float16" or "bfloat16") runs inference in; None for
    float32 (no autocast).

    Raises:
        ValueError: naming ``name`` (the argument or config key) and the accepted values.
    """
    if setting not in AUTOCAST_DTYPES:
        raise ValueError(f"{name} = {setting!r}; expected one of {tuple(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[setting]
