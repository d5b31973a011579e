"""``torch.export`` of :class:`PanopticInference`, and the artifact file it is saved in."""

import json
import os
from typing import Any, Dict

import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from torch import nn
from torch.export import Dim

from ..file_io import atomic_write
from .model import PanopticInference

__all__ = ["export_panoptic_model", "save_artifact", "artifact_metadata", "METADATA_FILE"]

METADATA_FILE = "panoptic_metadata.json"  # stored inside the .pt2 archive (``extra_files``)


def _nms_fake(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's fake ``nms`` kernel with a kept count that may be 0 or 1: torchvision's own
    (``create_unbacked_symint()``, minimum 2) makes the exported program assert at run time
    that every NMS keeps at least two boxes."""
    torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: "boxes must be (N, 4)")
    torch._check(scores.dim() == 1 and dets.size(0) == scores.size(0), lambda: "scores: (N,)")
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= dets.size(0))
    return dets.new_empty(kept, dtype=torch.long)


def smallest_exportable_side(model: nn.Module) -> int:
    """Images must be larger than twice the backbone's size divisibility on each side: smaller
    ones give 1-pixel feature maps, which the exported shapes cannot cover."""
    return 2 * max(model.backbone.size_divisibility, 1) + 1


def _example_image(model: nn.Module, min_side: int, max_side: int) -> torch.Tensor:
    """A random float32 (3, H, W) image to trace with. H != W and neither is a multiple of the
    size divisibility, so that tracing does not take an equality of sizes, or a padding of 0,
    for a rule."""
    stride = max(model.backbone.size_divisibility, 1)
    sides = [s for s in range(min_side, max_side + 1) if s % stride][:2]
    if len(sides) < 2:
        raise ValueError(f"Image side range [{min_side}, {max_side}] is too narrow to export")
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((3, *sides), generator=generator) * 255
    return image.to(model.pixel_mean.device)


def export_panoptic_model(
    model: nn.Module, min_side: int, max_side: int
) -> torch.export.ExportedProgram:
    """Capture a ``PanopticFPNExt``'s whole inference for images of any height and width in
    ``[min_side, max_side]``.

    Args:
        model: the model in eval mode, on the device the program should run on.
    Raises:
        ValueError: ``min_side`` is below :func:`smallest_exportable_side`.
    """
    smallest = smallest_exportable_side(model)
    if min_side < smallest:
        raise ValueError(
            f"Smallest image side {min_side} is below {smallest}, the smallest this backbone "
            f"(size divisibility {model.backbone.size_divisibility}) can be exported for"
        )
    torch.library.register_fake("torchvision::nms", _nms_fake, allow_override=True)
    side = {"min": min_side, "max": max_side}
    dynamic = ({1: Dim.DYNAMIC(**side), 2: Dim.DYNAMIC(**side)},)
    with torch.no_grad():
        return torch.export.export(
            PanopticInference(model).eval(),
            (_example_image(model, min_side, max_side),),
            dynamic_shapes=dynamic, strict=False
        )


def _category(dataset_id: int, contiguous: int, isthing: int, names) -> Dict[str, Any]:
    name = names[contiguous]
    return {"id": dataset_id, "contiguous": contiguous, "isthing": isthing, "name": name}


def artifact_metadata(cfg: CfgNode, min_side: int, max_side: int) -> Dict[str, Any]:
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
        "min_side": min_side,
        "max_side": max_side,
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
