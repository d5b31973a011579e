"""``torch.export`` of :class:`PanopticInference`, and the artifact file it is saved in."""

import json
import os
from typing import Any, Dict, Tuple

import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from torch import nn
from torch.export import Dim

from ..file_io import atomic_write
from . import run_panoptic
from .model import PanopticInference, smallest_padded_side

__all__ = [
    "export_panoptic_model",
    "example_inputs",
    "save_artifact",
    "artifact_metadata",
    "METADATA_FILE",
]

METADATA_FILE = run_panoptic.METADATA_FILE  # stored inside the .pt2 archive (``extra_files``)
# The smallest image and output side of an exported program (sizes 0 and 1 are specialised by
# torch.export; images with a side below the backbone's needs are padded by the program).
MIN_SIDE = 2


def _nms_fake(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's fake ``nms`` kernel with a kept count that may be 0 or 1: torchvision's own
    (``create_unbacked_symint()``, minimum 2) makes the exported program assert at run time
    that every NMS keeps at least two boxes."""
    torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: "boxes must be (N, 4)")
    torch._check(scores.dim() == 1 and dets.size(0) == scores.size(0), lambda: "scores: (N,)")
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= dets.size(0))
    return dets.new_empty(kept, dtype=torch.long)


def example_inputs(model: nn.Module, max_side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A random float32 (3, h, w) image and an output size (0, H, W) to trace with. h != w,
    neither a multiple of the size divisibility, and H, W differ from both, so that tracing
    takes no equality of sizes, nor a padding of 0, for a rule."""
    stride = max(model.backbone.size_divisibility, 1)
    sides = [s for s in range(min(max_side, 3 * stride + 1), max_side + 1) if s % stride][:2]
    if len(sides) < 2:
        raise ValueError(f"Largest image side {max_side} is too small to export")
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((3, *sides), generator=generator) * 255
    output_size = torch.empty((0, 2 * sides[0] + 1, 2 * sides[1] + 3))
    device = model.pixel_mean.device
    return image.to(device), output_size.to(device)


def export_panoptic_model(model: nn.Module, max_side: int) -> torch.export.ExportedProgram:
    """Capture a ``PanopticFPNExt``'s whole inference for images of any height and width in
    ``[MIN_SIDE, max_side]`` and outputs of any size.

    Args:
        model: the model in eval mode, on the device the program should run on.
    """
    torch.library.register_fake("torchvision::nms", _nms_fake, allow_override=True)
    side = Dim.DYNAMIC(min=MIN_SIDE, max=max_side)
    output_side = Dim.DYNAMIC(min=MIN_SIDE)
    dynamic = ({1: side, 2: side}, {1: output_side, 2: output_side})
    with torch.no_grad():
        return torch.export.export(
            PanopticInference(model).eval(),
            example_inputs(model, max_side),
            dynamic_shapes=dynamic,
            strict=False,
        )


def _category(dataset_id: int, contiguous: int, isthing: int, names) -> Dict[str, Any]:
    name = names[contiguous]
    return {"id": dataset_id, "contiguous": contiguous, "isthing": isthing, "name": name}


def artifact_metadata(cfg: CfgNode, model: nn.Module, max_side: int) -> Dict[str, Any]:
    """What a runner needs besides the program: input format and size rule, and the dataset's
    categories (``DATASETS.TEST[0]``'s metadata) to turn contiguous ids into dataset ids."""
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    categories = []
    if meta is not None and hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        for dataset_id, contiguous in meta.thing_dataset_id_to_contiguous_id.items():
            categories.append(_category(dataset_id, contiguous, 1, meta.thing_classes))
        for dataset_id, contiguous in meta.get("stuff_dataset_id_to_contiguous_id", {}).items():
            if contiguous > 0:  # 0 is the semantic "things" label, not a category
                categories.append(_category(dataset_id, contiguous, 0, meta.stuff_classes))
    return {
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "min_side": MIN_SIDE,
        "max_side": max_side,
        # test sizes whose side Detectron2 pads to less than this are padded to it
        "padded_side": smallest_padded_side(model),
        "device": cfg.MODEL.DEVICE,
        "categories": categories,
    }


def save_artifact(
    program: torch.export.ExportedProgram, metadata: Dict[str, Any], path: str
) -> None:
    """Save the program and its metadata as one ``.pt2`` file, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {METADATA_FILE: json.dumps(metadata)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
