"""Export of panoptic predictions as files for a test server or an external evaluation.

Two formats, both a JSON file plus a folder of PNGs (COCO panoptic result format: one PNG of
segment ids per image, ``id = R + 256 G + 256² B``, and per image ``{"image_id", "file_name",
"segments_info": [{"id", "category_id"}]}`` with the dataset's own category ids). The folder is
named like the JSON without ``.json``, the layout panopticapi's ``pq_compute`` and
cityscapesscripts' ``evalPanopticSemanticLabeling`` expect:

* ``"coco"``: ``panoptic_predictions.json`` and ``panoptic_predictions/<image file stem>.png``
  (the naming of Detectron2's ``COCOPanopticEvaluator``), for the COCO test server;
* ``"cityscapes"``: ``cityscapes_panoptic_<split>.json`` and
  ``cityscapes_panoptic_<split>/<image_id>_panoptic.png``, where ``<split>`` is the last
  ``_``-separated part of the dataset name (``val`` for ``..._val``). With the plugin's Cityscapes
  datasets the category ids are Cityscapes label ids and the image ids ``<city>_<seq>_<frame>``, as
  the Cityscapes benchmark requires; ``CITYSCAPES_RESULTS=<output_dir>
  csEvalPanopticSemanticLabeling`` evaluates the val split.

Every file is written atomically (temporary file + rename). The PNGs are written by the process
that made the prediction, as soon as it is made, so no image ever crosses processes; only the small
JSON entries are gathered, and the main process writes the JSON last. With several machines the
output directory must be on a shared file system.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..config import EXPORT_FORMATS
from ..data.panoptic_io import PanopticDataError, id2rgb
from ..file_io import atomic_write

__all__ = ["PanopticExporter", "export_paths", "write_id_map_png", "write_json"]


def export_paths(export_format: str, output_dir: str, dataset_name: str) -> Dict[str, str]:
    """Where a format's files go.

    Returns:
        {"json": path of the JSON file, "png_dir": folder of the PNGs}.
    Raises:
        ValueError: unknown format.
    """
    if export_format == "coco":
        stem = "panoptic_predictions"
    elif export_format == "cityscapes":
        stem = f"cityscapes_panoptic_{dataset_name.rsplit('_', 1)[-1]}"
    else:
        raise ValueError(
            f"Unknown export format {export_format!r}; expected one of {EXPORT_FORMATS}"
        )
    return {
        "json": os.path.join(output_dir, f"{stem}.json"),
        "png_dir": os.path.join(output_dir, stem),
    }


def write_id_map_png(path: str, id_map: np.ndarray) -> None:
    """Write an id map as a COCO-panoptic RGB PNG, atomically.

    Args:
        id_map: integer (H, W), ids in [0, 256³).
    """
    image = Image.fromarray(id2rgb(id_map))
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()))


def _categories(metadata) -> List[Dict[str, Any]]:
    """The dataset's categories ({"id", "name", "isthing"}), things first, from its metadata."""
    things = [
        {"id": dataset_id, "name": metadata.thing_classes[contiguous], "isthing": 1}
        for dataset_id, contiguous in metadata.thing_dataset_id_to_contiguous_id.items()
    ]
    stuff = [
        {"id": dataset_id, "name": metadata.stuff_classes[contiguous], "isthing": 0}
        for dataset_id, contiguous in metadata.stuff_dataset_id_to_contiguous_id.items()
        if contiguous > 0  # 0 is the semantic "things" label, not a category
    ]
    return things + stuff


class PanopticExporter:
    """Writes the predictions of one dataset in one export format.

    ``write`` per image (any process), then ``finish`` once with the entries of all processes.
    """

    def __init__(self, export_format: str, output_dir: str, dataset_name: str, metadata):
        """
        Args:
            export_format: "coco" or "cityscapes".
            output_dir: directory of the JSON file and the PNG folder (created if needed).
            dataset_name: the dataset's name (gives the Cityscapes split).
            metadata: the dataset's ``Metadata`` (classes and contiguous id maps).
        """
        self.export_format = export_format
        self.paths = export_paths(export_format, output_dir, dataset_name)
        self._categories = _categories(metadata)
        self._thing_dataset_ids = {
            v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_dataset_ids = {
            v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()
        }
        PathManager.mkdirs(self.paths["png_dir"])

    def _png_name(self, image: Mapping[str, Any]) -> str:
        if self.export_format == "cityscapes":
            return f"{image['image_id']}_panoptic.png"
        return os.path.splitext(os.path.basename(image["file_name"]))[0] + ".png"

    def _dataset_category(self, segment: Mapping[str, Any]) -> int:
        ids = self._thing_dataset_ids if segment["isthing"] else self._stuff_dataset_ids
        return ids[segment["category_id"]]

    def write(
        self, image: Mapping[str, Any], id_map: torch.Tensor, segments_info: Sequence[Mapping]
    ) -> Dict[str, Any]:
        """Write the PNG of one validated prediction.

        Args:
            image: the model input ("image_id", "file_name").
            id_map: integer (H, W), segment ids in [0, 256³), any device.
            segments_info: its segments (contiguous "category_id", "isthing"), already checked
                against the dataset's categories.
        Returns:
            the image's JSON entry, for :meth:`finish`.
        """
        file_name = self._png_name(image)
        write_id_map_png(os.path.join(self.paths["png_dir"], file_name), id_map.cpu().numpy())
        return {
            "image_id": image["image_id"],
            "file_name": file_name,
            "segments_info": [
                {"id": int(s["id"]), "category_id": self._dataset_category(s)}
                for s in segments_info
            ],
        }

    def finish(
        self,
        annotations: Sequence[Mapping[str, Any]],
        images: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> None:
        """Write the JSON file with the entries of every image (main process only).

        Args:
            annotations: the entries :meth:`write` returned.
            images: COCO "images" entries ({"id", "file_name", "height", "width"}) to include.

        Raises:
            PanopticDataError: two images got the same PNG name (images of one name in several
                folders, with the "coco" format); both image ids are named.
        """
        by_name: Dict[str, Any] = {}
        for annotation in annotations:
            other = by_name.setdefault(annotation["file_name"], annotation["image_id"])
            if other != annotation["image_id"]:
                raise PanopticDataError(
                    f"Export {self.export_format}: image_id {other!r} and image_id "
                    f"{annotation['image_id']!r} both map to {annotation['file_name']} in "
                    f"{self.paths['png_dir']}; image file names must be unique"
                )
        data = {"annotations": list(annotations), "categories": self._categories}
        if images is not None:
            data = {"images": list(images), **data}
        write_json(self.paths["json"], data)
