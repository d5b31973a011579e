"""Datasets in COCO panoptic format: metadata, a validating loader, and custom registration.

A COCO-panoptic dataset is a JSON file (``images``, ``annotations`` with ``segments_info`` per
image, ``categories``), one PNG of segment ids per image, and the images. The loader turns it into
Detectron2 dataset dicts with *separated* contiguous ids (the convention of Detectron2's
``coco_2017_*_panoptic_separated``): thing categories map to 0..T-1, stuff categories to 1..S,
with 0 of the semantic labels standing for every thing pixel ("things").
"""

import json
import os
from collections import defaultdict
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.colormap import colormap
from detectron2.utils.file_io import PathManager

from ..registration import register_dataset_once
from .panoptic_io import VOID_ID, PanopticDataError

__all__ = [
    "EVALUATOR_TYPE",
    "THINGS_COLOR",
    "load_coco_panoptic_json",
    "panoptic_metadata_from_categories",
    "register_coco_panoptic_dataset",
]

EVALUATOR_TYPE = "panoptic_fpn_ext"
# Color of the "things" entry of stuff_colors: the one Detectron2 uses for COCO.
THINGS_COLOR = [82, 18, 128]
# Number of missing files listed by name in an error message.
_MAX_LISTED = 5


def _category_color(category: Mapping[str, Any], index: int) -> List[int]:
    """The category's "color", or Detectron2's colormap entry ``index`` when it has none."""
    if "color" in category:
        return [int(c) for c in category["color"]]
    palette = colormap(rgb=True, maximum=255)
    return [int(c) for c in palette[index % len(palette)]]


def _check_categories(categories: Sequence[Mapping[str, Any]], source: str) -> None:
    seen = set()
    for category in categories:
        missing = {"id", "name", "isthing"} - set(category)
        if missing:
            raise PanopticDataError(
                f"{source}: category {dict(category)} lacks {sorted(missing)}; expected "
                "'id', 'name', 'isthing' (and optionally 'color')"
            )
        if category["id"] in seen:
            raise PanopticDataError(f"{source}: category id {category['id']} appears twice")
        if category["id"] == 0 and not category["isthing"]:
            raise PanopticDataError(
                f"{source}: stuff category {category['name']!r} has id 0, which the separated "
                "convention reserves for 'things' (stuff_dataset_id_to_contiguous_id[0] = 0)"
            )
        seen.add(category["id"])


def panoptic_metadata_from_categories(
    categories: Sequence[Mapping[str, Any]], source: str = "categories"
) -> Dict[str, Any]:
    """Separated-convention metadata from COCO-panoptic categories, in the order given.

    Args:
        categories: dicts with "id", "name", "isthing" (0/1) and optionally "color" (RGB;
            Detectron2's colormap is used where it is absent).
        source: what the categories came from (a file name), for error messages.
    Returns:
        ``thing_classes``, ``thing_colors``, ``thing_dataset_id_to_contiguous_id`` (→ 0..T-1),
        ``stuff_classes`` (["things"] + stuff names), ``stuff_colors``,
        ``stuff_dataset_id_to_contiguous_id`` ({0: 0} + stuff ids → 1..S).
    Raises:
        PanopticDataError: a category lacks a key, an id repeats, or a stuff category has id 0.
    """
    _check_categories(categories, source)
    things = [(i, c) for i, c in enumerate(categories) if c["isthing"]]
    stuff = [(i, c) for i, c in enumerate(categories) if not c["isthing"]]
    return {
        "thing_classes": [c["name"] for _, c in things],
        "thing_colors": [_category_color(c, i) for i, c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: k for k, (_, c) in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for _, c in stuff],
        "stuff_colors": [THINGS_COLOR] + [_category_color(c, i) for i, c in stuff],
        "stuff_dataset_id_to_contiguous_id": {
            0: 0,
            **{c["id"]: k + 1 for k, (_, c) in enumerate(stuff)},
        },
    }


def _read_json(path: str, missing_hint: str) -> Dict[str, Any]:
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Panoptic JSON {path} does not exist. {missing_hint}".rstrip())
    with PathManager.open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise PanopticDataError(f"Panoptic JSON {path} is not valid JSON: {e}") from e
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or key not in data:
            raise PanopticDataError(
                f"Panoptic JSON {path} has no '{key}' list; expected COCO panoptic format"
            )
    return data


def _images_by_id(images: Iterable[Mapping[str, Any]], path: str) -> Dict[Any, Mapping]:
    by_id = {}
    for image in images:
        missing = {"id", "file_name", "height", "width"} - set(image)
        if missing:
            raise PanopticDataError(
                f"Panoptic JSON {path}: image entry {dict(image)} lacks {sorted(missing)}"
            )
        if image["id"] in by_id:
            raise PanopticDataError(f"Panoptic JSON {path}: image id {image['id']!r} repeats")
        by_id[image["id"]] = image
    return by_id


def _annotations_by_image(annotations: Iterable[Mapping], images: Mapping, path: str) -> Dict:
    by_image = {}
    for ann in annotations:
        missing = {"image_id", "file_name", "segments_info"} - set(ann)
        if missing:
            raise PanopticDataError(
                f"Panoptic JSON {path}: annotation of image_id {ann.get('image_id')!r} lacks "
                f"{sorted(missing)}"
            )
        image_id = ann["image_id"]
        if image_id not in images:
            raise PanopticDataError(
                f"Panoptic JSON {path}: annotation {ann['file_name']} has image_id "
                f"{image_id!r}, which is not in 'images'"
            )
        if image_id in by_image:
            raise PanopticDataError(
                f"Panoptic JSON {path}: image_id {image_id!r} has more than one annotation"
            )
        by_image[image_id] = ann
    unannotated = [i for i in images if i not in by_image]
    if unannotated:
        raise PanopticDataError(
            f"Panoptic JSON {path}: {len(unannotated)} image(s) have no annotation, e.g. "
            f"image_id {unannotated[:_MAX_LISTED]}; every image needs one (even if it is empty)"
        )
    return by_image


class _CategoryMap:
    """Dataset category id → (contiguous id, isthing), from separated metadata."""

    def __init__(self, metadata: Mapping[str, Any]):
        self.things = dict(metadata["thing_dataset_id_to_contiguous_id"])
        # Contiguous stuff id 0 is the "things" label, not a dataset category.
        self.stuff = {k: v for k, v in metadata["stuff_dataset_id_to_contiguous_id"].items() if v}

    def convert(self, category_id: Any, where: str, segment_id: Any) -> Dict[str, Any]:
        """Contiguous id and "isthing" of a dataset category id; ``where`` and ``segment_id``
        name the segment in the error."""
        if category_id in self.things:
            return {"category_id": self.things[category_id], "isthing": True}
        if category_id in self.stuff:
            return {"category_id": self.stuff[category_id], "isthing": False}
        raise PanopticDataError(
            f"{where} segment {segment_id!r} has category_id {category_id!r}, which is not a "
            "category of the dataset "
            f"(thing ids {sorted(self.things)}, stuff ids {sorted(self.stuff)})"
        )


def _segment_error(where: str, segment_id: Any, problem: str) -> PanopticDataError:
    """The error for a bad segment, named by ``where`` (file and image) and its id."""
    return PanopticDataError(f"{where} segment {segment_id!r}: {problem}")


def _convert_segments(segments: Iterable[Mapping], categories: _CategoryMap, where: str) -> List:
    """Segments with contiguous category ids and "isthing"; keeps "area" and "bbox"."""
    converted, seen = [], set()
    for segment in segments:
        segment_id = segment.get("id")
        if not isinstance(segment_id, int) or segment_id <= VOID_ID or segment_id >= 256**3:
            raise _segment_error(where, segment_id, "expected an id in [1, 256³) (0 is void)")
        if segment_id in seen:
            raise _segment_error(where, segment_id, "the id appears twice")
        iscrowd = segment.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise _segment_error(where, segment_id, f"iscrowd is {iscrowd!r}; expected 0/1")
        seen.add(segment_id)
        category = categories.convert(segment.get("category_id"), where, segment_id)
        out = {"id": segment_id, "iscrowd": int(iscrowd), **category}
        for key in ("area", "bbox"):
            if key in segment:
                out[key] = segment[key]
        converted.append(out)
    return converted


def _check_files_exist(paths: Iterable[str], what: str, source: str) -> None:
    """Raise FileNotFoundError listing the missing ones; one directory listing per directory."""
    by_dir = defaultdict(list)
    for path in paths:
        by_dir[os.path.dirname(path)].append(path)
    missing = []
    for directory, files in by_dir.items():
        present = set(PathManager.ls(directory)) if PathManager.isdir(directory) else set()
        missing += [p for p in files if os.path.basename(p) not in present]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} {what} listed in {source} do not exist, e.g. "
            f"{missing[:_MAX_LISTED]}"
        )


def _image_path(image_root: str, image: Mapping[str, Any]) -> str:
    """``image_root/<the image entry's "file_name">``."""
    return os.path.join(image_root, image["file_name"])


def load_coco_panoptic_json(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    metadata: Mapping[str, Any],
    image_path: Callable[[str, Mapping[str, Any]], str] = _image_path,
    missing_hint: str = "",
) -> List[Dict[str, Any]]:
    """Load a COCO-panoptic dataset into Detectron2 dataset dicts, validating it.

    Args:
        panoptic_json: the COCO-panoptic JSON file.
        image_root: directory of the images.
        panoptic_root: directory of the panoptic PNGs (the annotations' "file_name").
        metadata: separated-convention metadata with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id`` (see :func:`panoptic_metadata_from_categories`).
        image_path: ``(image_root, image entry of the JSON) -> path`` of the image file.
        missing_hint: appended to the error when ``panoptic_json`` does not exist.
    Returns:
        one dict per image, in the JSON's image order: "file_name", "image_id", "height",
        "width" (pixels), "pan_seg_file_name", "segments_info" (each: "id", "category_id"
        contiguous — thing 0..T-1 or stuff 1..S —, "isthing", "iscrowd", and "area"/"bbox" when
        the JSON has them).
    Raises:
        FileNotFoundError: the JSON, an image or a panoptic PNG does not exist.
        PanopticDataError: the JSON is malformed: missing keys, repeated ids, an image without
            annotation or an annotation without image, a segment with an unknown category id.
    """
    data = _read_json(panoptic_json, missing_hint)
    images = _images_by_id(data["images"], panoptic_json)
    annotations = _annotations_by_image(data["annotations"], images, panoptic_json)
    categories = _CategoryMap(metadata)
    records = []
    for image_id, image in images.items():
        ann = annotations[image_id]
        where = f"Panoptic JSON {panoptic_json}: image_id {image_id!r}"
        records.append(
            {
                "file_name": image_path(image_root, image),
                "image_id": image_id,
                "height": int(image["height"]),
                "width": int(image["width"]),
                "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                "segments_info": _convert_segments(ann["segments_info"], categories, where),
            }
        )
    if not records:
        raise PanopticDataError(f"Panoptic JSON {panoptic_json} lists no images")
    _check_files_exist((r["file_name"] for r in records), "image(s)", panoptic_json)
    _check_files_exist((r["pan_seg_file_name"] for r in records), "panoptic PNG(s)", panoptic_json)
    return records


def dataset_metadata(
    image_root: str, panoptic_root: str, panoptic_json: str, instances_json: Optional[str]
) -> Dict[str, Any]:
    """The path and evaluator entries of a panoptic dataset's metadata (besides the classes)."""
    paths = {
        "image_root": image_root,
        "panoptic_root": panoptic_root,
        "panoptic_json": panoptic_json,
        "evaluator_type": EVALUATOR_TYPE,
        "ignore_label": 255,
    }
    if instances_json is not None:
        paths["json_file"] = instances_json
    return paths


def register_coco_panoptic_dataset(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: Optional[str] = None,
):
    """Register a dataset in COCO panoptic format for training and evaluation with the plugin.

    Reads the JSON's ``categories`` now (for the class lists, colors and contiguous id maps);
    the images and annotations are loaded, and validated, when the dataset is first used::

        from panoptic_fpn_ext.data import register_coco_panoptic_dataset
        register_coco_panoptic_dataset(
            "my_dataset_train", "data/train", "data/panoptic_train", "data/panoptic_train.json"
        )
        # then DATASETS.TRAIN ("my_dataset_train",), ROI_HEADS.NUM_CLASSES = number of thing
        # categories, SEM_SEG_HEAD.NUM_CLASSES = number of stuff categories + 1

    Args:
        name: dataset name for ``DatasetCatalog``/``MetadataCatalog``.
        image_root: directory of the images (the JSON images' "file_name" is relative to it).
        panoptic_root: directory of the panoptic PNGs.
        panoptic_json: the COCO-panoptic JSON.
        instances_json: optional COCO instances JSON of the same images, which enables
            Detectron2's COCOEvaluator (box and mask AP).
    Returns:
        the dataset's ``Metadata``.
    Raises:
        ValueError: ``name`` is already registered for another JSON file.
        FileNotFoundError, PanopticDataError: the JSON is missing or its categories are malformed.
    """
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name).get("panoptic_json")
        if registered != panoptic_json:
            raise ValueError(
                f"Dataset '{name}' is already registered (panoptic_json {registered!r}); "
                f"cannot register it again for {panoptic_json}"
            )
    data = _read_json(panoptic_json, "")
    if "categories" not in data:
        raise PanopticDataError(f"Panoptic JSON {panoptic_json} has no 'categories' list")
    classes = panoptic_metadata_from_categories(data["categories"], panoptic_json)
    loader = partial(load_coco_panoptic_json, panoptic_json, image_root, panoptic_root, classes)
    paths = dataset_metadata(image_root, panoptic_root, panoptic_json, instances_json)
    register_dataset_once(name, loader, {**classes, **paths})
    return MetadataCatalog.get(name)
