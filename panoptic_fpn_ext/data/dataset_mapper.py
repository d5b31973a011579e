"""The panoptic dataset mapper: one panoptic record → what Panoptic FPN trains on.

From the image, the panoptic PNG and ``segments_info`` it makes, on the fly:

* instances: one per non-crowd thing segment, with its bitmask, tight box and contiguous class;
* the semantic target of Detectron2's Panoptic FPN ("stuff-only"): 0 for every thing pixel
  (crowd included), the contiguous stuff id (1..S) for stuff pixels, the ignore value for void.

This is the map Detectron2's ``prepare_panoptic_fpn.py`` writes to disk, made here without a
preprocessing step. Crowd segments give no instance (as Detectron2's ``DatasetMapper`` drops
``iscrowd`` annotations) but are "things" in the semantic target.

The geometric augmentations are applied once, to the image and to a map of segment indices; the
semantic target and the instance masks are both read off the transformed index map, so they agree
with each other pixel for pixel and follow the image.
"""

import logging
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from ..config import check_class_counts
from .panoptic_io import PanopticDataError, read_image_file, read_panoptic_png

__all__ = ["PanopticDatasetMapper", "semantic_from_panoptic", "semantic_label"]

logger = logging.getLogger(__name__)


def _segment_tables(
    segment_ids: np.ndarray, record: dict, ignore_value: int, num_stuff_classes: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Targets of each segment of a panoptic PNG.

    Args:
        segment_ids: (K,) the PNG's distinct segment ids (see ``PanopticPNG``).
        record: the dataset dict (its "segments_info" matches ``segment_ids``; void is 0).
        ignore_value: semantic label of void pixels.
        num_stuff_classes: 0 for Panoptic FPN's "stuff-only" target; S > 0 for the all-classes
            target of a semantic-segmentation-only model (see ``semantic_label``).
    Returns:
        semantic: int64 (K,), semantic label of each segment, ``ignore_value`` for void;
        thing_class: int64 (K,), contiguous class of each non-crowd thing segment, -1 otherwise.
    """
    semantic = np.full(len(segment_ids), ignore_value, dtype=np.int64)
    thing_class = np.full(len(segment_ids), -1, dtype=np.int64)
    position = {int(s): k for k, s in enumerate(segment_ids)}
    for segment in record["segments_info"]:
        k = position[segment["id"]]
        if segment["isthing"]:
            semantic[k] = semantic_label(True, segment["category_id"], num_stuff_classes)
            if not segment["iscrowd"]:
                thing_class[k] = segment["category_id"]
        elif segment["category_id"] < 1 or segment["category_id"] == ignore_value:
            raise PanopticDataError(
                f"image_id {record['image_id']!r} ({record['file_name']}): stuff segment "
                f"{segment['id']} has contiguous category_id {segment['category_id']}; expected "
                f"1..S (0 is 'things') and not the ignore value {ignore_value}"
            )
        else:
            semantic[k] = semantic_label(False, segment["category_id"], num_stuff_classes)
    return semantic, thing_class


def semantic_label(isthing: bool, category_id: int, num_stuff_classes: int = 0) -> int:
    """The semantic-branch label of a segment with contiguous ``category_id``.

    With ``num_stuff_classes == 0``, Panoptic FPN's "stuff-only" labels (Detectron2's order, which
    its model-zoo weights depend on): 0 for every thing ("other"), stuff classes 1..S.
    With ``num_stuff_classes == S > 0``, all classes for a semantic-only model (the paper's
    "Semantic FPN"): stuff 0..S-1, then things S..S+T-1 (Cityscapes' trainId order).
    """
    if num_stuff_classes == 0:
        return 0 if isthing else category_id
    return num_stuff_classes + category_id if isthing else category_id - 1


def semantic_from_panoptic(
    record: dict, ignore_value: int = 255, num_stuff_classes: int = 0
) -> np.ndarray:
    """The semantic target of a record at its original size (reads and validates its PNG).

    Args:
        record: a dataset dict of the plugin's loaders.
        ignore_value: label of void pixels.
        num_stuff_classes: 0 for the "stuff-only" target, S for all classes (``semantic_label``).
    Returns:
        int64 (H, W): by default 0 for thing pixels (crowd included), contiguous stuff ids 1..S
        for stuff; ``ignore_value`` for void.
    """
    png = read_panoptic_png(record)
    semantic, _ = _segment_tables(png.segment_ids, record, ignore_value, num_stuff_classes)
    return semantic[png.index_map]


def _transform_index_map(transforms: T.TransformList, index_map: np.ndarray) -> np.ndarray:
    """Apply geometric transforms to a map of segment indices, nearest-neighbour.

    The map goes through ``apply_segmentation`` as uint8, as Detectron2 transforms semantic maps;
    a map with more than 256 indices goes through one byte plane at a time (every plane takes its
    pixels from the same places, so the indices are reassembled exactly).

    Args:
        index_map: int64 (H, W), values >= 0.
    Returns:
        int64 (H', W'), the transformed map.
    """
    shifts = range(0, max(int(index_map.max()).bit_length(), 1), 8)
    return sum(
        transforms.apply_segmentation(((index_map >> s) & 255).astype(np.uint8)).astype(np.int64)
        << s
        for s in shifts
    )


def _instances(index_map: np.ndarray, thing_class: np.ndarray) -> Instances:
    """Instances of the thing segments visible in ``index_map``.

    Args:
        index_map: int64 (H, W) segment indices, after augmentation.
        thing_class: int64 (K,) per segment index, -1 for segments that are not instances.
    Returns:
        ``Instances`` of size (H, W) with gt_masks (``BitMasks`` (N, H, W)), gt_boxes (tight
        around the masks, XYXY pixels) and gt_classes (int64 (N,)); N may be 0.
    """
    indices = np.flatnonzero(thing_class >= 0)
    masks = index_map[None] == indices[:, None, None]
    visible = masks.any(axis=(1, 2))
    masks, indices = masks[visible], indices[visible]
    instances = Instances(index_map.shape)
    instances.gt_masks = BitMasks(torch.from_numpy(masks))
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.as_tensor(thing_class[indices], dtype=torch.int64)
    return instances


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array → (C, H, W) tensor of the same dtype, as Detectron2's DatasetMapper, in
    memory of its own (the decoded image may be a read-only buffer)."""
    return torch.from_numpy(image.transpose(2, 0, 1).copy())


def _num_stuff_classes(cfg) -> int:
    """0 for ``PANOPTIC_FPN_EXT.SEMANTIC_TARGET`` "stuff_and_other"; for "all_classes", the number
    of stuff classes of the first training dataset (its ``stuff_classes`` minus "things")."""
    if cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET == "stuff_and_other":
        return 0
    return len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes) - 1


class PanopticDatasetMapper:
    """Map a panoptic dataset dict (COCO panoptic record) to Panoptic FPN's inputs.

    Input: a dict of the plugin's loaders ("file_name", "image_id", "height", "width",
    "pan_seg_file_name", "segments_info" with contiguous ids).

    Output: the input's keys plus
        "image": Tensor (C, H', W'), the augmented image in ``image_format``, uint8;
        in training also
        "instances": ``Instances`` with gt_boxes, gt_classes, gt_masks (``BitMasks``), one per
            non-crowd thing segment still visible after augmentation (possibly none);
        "sem_seg": int64 Tensor (H', W'): 0 things, 1..S stuff, ``ignore_value`` void.
    At test time the panoptic PNG is not read.

    Raises (from ``__call__``): FileNotFoundError for a missing image or PNG, and
    ``PanopticDataError`` (a ValueError) for an unreadable file, a size that differs from the
    record, or PNG segments that differ from ``segments_info`` — each naming the file.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        ignore_value: int = 255,
        num_stuff_classes: int = 0,
    ):
        """
        Args:
            is_train: whether to make training targets.
            augmentations: geometric augmentations (or transforms), applied in order.
            image_format: an image format of ``detection_utils.read_image`` ("BGR", "RGB", ...).
            ignore_value: semantic label of void pixels.
            num_stuff_classes: 0 for Panoptic FPN's "stuff-only" semantic target; the dataset's
                number of stuff classes S for the all-classes target (``semantic_label``).
        """
        self.is_train = is_train
        self.num_stuff_classes = num_stuff_classes
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value
        mode = "training" if is_train else "inference"
        logger.info(f"[PanopticDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        """Resize (INPUT.MIN_SIZE_*/MAX_SIZE_*), then crop (INPUT.CROP.*, training only), then
        flip (INPUT.RANDOM_FLIP, training only); INPUT.FORMAT; MODEL.SEM_SEG_HEAD.IGNORE_VALUE.

        Raises:
            ValueError: INPUT.MASK_FORMAT is not "bitmask"; a class count of the model differs
                from a dataset of DATASETS.TRAIN/TEST (``check_class_counts``).
        """
        check_class_counts(cfg, *cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
        if cfg.INPUT.MASK_FORMAT != "bitmask":
            raise ValueError(
                f"INPUT.MASK_FORMAT = {cfg.INPUT.MASK_FORMAT!r}: PanopticDatasetMapper makes "
                "instance masks from panoptic PNGs and needs INPUT.MASK_FORMAT 'bitmask'"
            )
        augmentations = utils.build_augmentation(cfg, is_train)  # [resize, flip if training]
        if is_train and cfg.INPUT.CROP.ENABLED:
            augmentations.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_stuff_classes": _num_stuff_classes(cfg),
        }

    def __call__(self, dataset_dict: dict) -> dict:
        """Read, validate and augment one record; see the class docstring for the output."""
        record = dict(dataset_dict)  # the inputs' nested values are only read, never modified
        image = read_image_file(record["file_name"], self.image_format)
        utils.check_image_size(record, image)
        aug_input = T.AugInput(image)
        if not self.is_train:
            self.augmentations(aug_input)
            record["image"] = _image_tensor(aug_input.image)
            return record
        png = read_panoptic_png(record)
        semantic, thing_class = _segment_tables(
            png.segment_ids, record, self.ignore_value, self.num_stuff_classes
        )
        transforms = self.augmentations(aug_input)
        index_map = _transform_index_map(transforms, png.index_map)
        record["image"] = _image_tensor(aug_input.image)
        record["sem_seg"] = torch.as_tensor(semantic[index_map])
        record["instances"] = _instances(index_map, thing_class)
        return record
