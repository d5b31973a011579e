"""Cityscapes panoptic (gtFine) in the format of cityscapesscripts' ``createPanopticImgs``.

``createPanopticImgs`` writes ``gtFine/cityscapes_panoptic_{split}.json`` and
``gtFine/cityscapes_panoptic_{split}/<image_id>_gtFine_panoptic.png`` in COCO panoptic format, with
the Cityscapes label ids as category ids (e.g. 7 road, 24 person) and string image ids such as
``frankfurt_000000_000294``. The images are ``leftImg8bit/{split}/<city>/<image_id>_leftImg8bit.png``
(the JSON's image "file_name" is not: it reads ``<image_id>_gtFine_leftImg8bit.png``).
The 19 evaluated classes (8 things, 11 stuff) come from ``cityscapesscripts.helpers.labels``, in
train-id order.
"""

import os
from typing import Any, Dict, List, Mapping

from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from .coco_panoptic import load_coco_panoptic_json, panoptic_metadata_from_categories

__all__ = ["cityscapes_image_path", "cityscapes_panoptic_metadata", "load_cityscapes_panoptic_json"]

MISSING_HINT = (
    "Create it from the gtFine annotations with cityscapesscripts' createPanopticImgs "
    "(CITYSCAPES_DATASET=<cityscapes root> csCreatePanopticImgs)."
)


def cityscapes_panoptic_metadata() -> Dict[str, Any]:
    """Separated-convention metadata of the 19 Cityscapes train classes.

    Returns:
        8 thing classes (person, rider, car, truck, bus, train, motorcycle, bicycle → 0..7) and
        ["things"] + 11 stuff classes (road ... sky → 1..11), keyed by Cityscapes label id, with
        the Cityscapes colors.
    """
    evaluated = [label for label in CITYSCAPES_LABELS if not label.ignoreInEval]
    categories = [
        {
            "id": label.id,
            "name": label.name,
            "isthing": int(label.hasInstances),
            "color": list(label.color),
        }
        for label in sorted(evaluated, key=lambda label: label.trainId)
    ]
    return panoptic_metadata_from_categories(categories, "cityscapesscripts.helpers.labels")


def cityscapes_image_path(image_root: str, image: Mapping[str, Any]) -> str:
    """``image_root/<city>/<image id>_leftImg8bit.png``; the city is the image id up to its first _.

    The image id, not the JSON's "file_name", names the file: ``createPanopticImgs`` writes
    "<image id>_gtFine_leftImg8bit.png" there, which is not the image's name.
    """
    image_id = str(image["id"])
    return os.path.join(image_root, image_id.split("_")[0], f"{image_id}_leftImg8bit.png")


def load_cityscapes_panoptic_json(
    panoptic_json: str, image_root: str, panoptic_root: str
) -> List[Dict[str, Any]]:
    """Load one split of Cityscapes panoptic, validated (see ``load_coco_panoptic_json``).

    Args:
        panoptic_json: ``gtFine/cityscapes_panoptic_{split}.json``.
        image_root: ``leftImg8bit/{split}``.
        panoptic_root: ``gtFine/cityscapes_panoptic_{split}``.
    Returns:
        one dict per image; "image_id" is the Cityscapes image id (a string).
    """
    return load_coco_panoptic_json(
        panoptic_json,
        image_root,
        panoptic_root,
        cityscapes_panoptic_metadata(),
        image_path=cityscapes_image_path,
        missing_hint=MISSING_HINT,
    )
