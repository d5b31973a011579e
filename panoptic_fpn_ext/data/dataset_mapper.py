"""The panoptic dataset mapper: one panoptic record → what Panoptic FPN trains on.

From the image, the panoptic PNG and ``segments_info`` it makes, on the fly:

* instances: one per non-crowd thing segment, with its mask, tight box and contiguous class;
* the semantic target of Detectron2's Panoptic FPN ("stuff-only"): 0 for every thing pixel
  (crowd included), the contiguous stuff id (1..S) for stuff pixels, the ignore value for void.

This is the map Detectron2's ``prepare_panoptic_fpn.py`` writes to disk, made here without a
preprocessing step. Crowd segments give no instance (as Detectron2's ``DatasetMapper`` drops
``iscrowd`` annotations) but are "things" in the semantic target.

The geometric augmentations are applied once, to the image and to a map of segment indices; the
semantic target and the instance masks are both read off the transformed index map, so they agree
with each other pixel for pixel and follow the image. One compiled pass over that map gives the
semantic target and every segment's box; each instance's mask is then cut out inside its box
only (:class:`.cropped_masks.CroppedMasks`), never at full image size.
"""

import logging
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ..config import check_class_counts
from ..evaluation.jit import jit
from .cropped_masks import CroppedMasks
from .dataset_check import check_datasets
from .panoptic_io import PanopticDataError, read_image_file
from .panoptic_png import read_segment_indices

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
    segments = read_segment_indices(record)
    semantic, _ = _segment_tables(segments.segment_ids, record, ignore_value, num_stuff_classes)
    return semantic[segments.index_map]


def _transform_index_map(transforms: T.TransformList, index_map: np.ndarray) -> np.ndarray:
    """Apply geometric transforms to a map of segment indices, nearest-neighbour.

    The map goes through ``apply_segmentation`` as uint8, as Detectron2 transforms semantic maps;
    a map of more than 256 indices goes through one byte plane at a time (every plane takes its
    pixels from the same places, so the indices are reassembled exactly).

    Args:
        index_map: uint8 or int32 (H, W), values >= 0.
    Returns:
        (H', W') of the same dtype, C-contiguous.
    """
    if index_map.dtype == np.uint8:
        return np.ascontiguousarray(transforms.apply_segmentation(index_map))
    shifts = range(0, max(int(index_map.max()).bit_length(), 1), 8)
    planes = (
        transforms.apply_segmentation(((index_map >> s) & 255).astype(np.uint8)).astype(np.int32)
        << s
        for s in shifts
    )
    return np.ascontiguousarray(sum(planes))


@jit
def _semantic_and_boxes(index_map, semantic_of_index, semantic, boxes):
    """One pass over the transformed index map: ``semantic[y, x]`` the label of the pixel's
    index, and for each index its tight box (x0, y0, x1, y1), x1 and y1 exclusive; ``boxes``
    starts as (W, H, 0, 0) (empty)."""
    for y in range(index_map.shape[0]):
        for x in range(index_map.shape[1]):
            k = index_map[y, x]
            semantic[y, x] = semantic_of_index[k]
            boxes[k, 0], boxes[k, 1] = min(boxes[k, 0], x), min(boxes[k, 1], y)
            boxes[k, 2], boxes[k, 3] = max(boxes[k, 2], x + 1), max(boxes[k, 3], y + 1)


@jit
def _crop_masks(index_map, indices, boxes, offsets, data):
    """Each index's mask inside its box, row-major from ``data[offsets[n]]``."""
    for n in range(len(indices)):
        position = offsets[n]
        for y in range(boxes[n, 1], boxes[n, 3]):
            for x in range(boxes[n, 0], boxes[n, 2]):
                data[position] = index_map[y, x] == indices[n]
                position += 1


def _semantic_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest of uint8, int16, int64 that holds the labels (and the ignore value)."""
    largest = int(labels.max(initial=0))
    return np.dtype(np.uint8 if largest <= 255 else np.int16 if largest < 2**15 else np.int64)


def _targets(
    index_map: np.ndarray, semantic: np.ndarray, thing_class: np.ndarray, compact: bool
) -> Tuple[torch.Tensor, Instances]:
    """The semantic target and the instances of a transformed index map.

    Args:
        index_map: uint8 or int32 (H, W) segment indices, after augmentation.
        semantic: int64 (K,), the semantic label of each index.
        thing_class: int64 (K,), the contiguous class of each index, -1 for indices that are
            not instances.
        compact: whether the semantic target may have the smallest dtype that holds its labels.
    Returns:
        sem_seg: (H, W), int64 or the compact dtype;
        ``Instances`` of size (H, W) with gt_masks (``CroppedMasks``), gt_boxes (tight around
        the masks, XYXY pixels) and gt_classes (int64 (N,)), one per index with a class and a
        pixel, in index order; N may be 0.
    """
    height, width = index_map.shape
    sem_seg = np.empty((height, width), dtype=_semantic_dtype(semantic) if compact else np.int64)
    boxes = np.tile(np.array([width, height, 0, 0], dtype=np.int64), (len(semantic), 1))
    _semantic_and_boxes(index_map, semantic.astype(sem_seg.dtype), sem_seg, boxes)
    indices = np.flatnonzero((thing_class >= 0) & (boxes[:, 2] > 0))
    boxes = boxes[indices]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    offsets = np.cumsum(areas) - areas
    data = np.empty(int(areas.sum()), dtype=bool)
    _crop_masks(index_map, indices.astype(index_map.dtype), boxes, offsets, data)
    instances = Instances((height, width))
    instances.gt_masks = CroppedMasks(
        torch.from_numpy(data), torch.from_numpy(offsets), torch.from_numpy(boxes), (height, width)
    )
    instances.gt_boxes = Boxes(torch.from_numpy(boxes).to(torch.float32))
    instances.gt_classes = torch.from_numpy(thing_class[indices])
    return torch.from_numpy(sem_seg), instances


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
        "instances": ``Instances`` with gt_boxes, gt_classes, gt_masks (``CroppedMasks``: the
            interface of ``BitMasks`` that Detectron2's RoI heads use, each mask stored in its
            box), one per non-crowd thing segment still visible after augmentation (possibly
            none);
        "sem_seg": Tensor (H', W'): 0 things, 1..S stuff, ``ignore_value`` void; int64, or
            with ``compact_sem_seg`` the smallest of uint8 / int16 / int64 that holds the labels
            (``PanopticFPNExt`` converts it to int64 on its device).
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
        compact_sem_seg: bool = False,
    ):
        """
        Args:
            is_train: whether to make training targets.
            augmentations: geometric augmentations (or transforms), applied in order.
            image_format: an image format of ``detection_utils.read_image`` ("BGR", "RGB", ...).
            ignore_value: semantic label of void pixels.
            num_stuff_classes: 0 for Panoptic FPN's "stuff-only" semantic target; the dataset's
                number of stuff classes S for the all-classes target (``semantic_label``).
            compact_sem_seg: give "sem_seg" the smallest integer dtype that holds its labels
                (uint8 on COCO and Cityscapes: 1/8 of the bytes handed from a loader worker and
                copied to the device) instead of int64. Only for a model that converts it, as
                ``PanopticFPNExt`` does; Detectron2's own meta-architectures need int64.
        """
        self.is_train = is_train
        self.compact_sem_seg = compact_sem_seg
        self.num_stuff_classes = num_stuff_classes
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value
        mode = "training" if is_train else "inference"
        logger.info(f"[PanopticDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        """Resize (INPUT.MIN_SIZE_*/MAX_SIZE_*), then crop (INPUT.CROP.*, training only), then
        flip (INPUT.RANDOM_FLIP, training only); INPUT.FORMAT; MODEL.SEM_SEG_HEAD.IGNORE_VALUE;
        a compact "sem_seg" for MODEL.META_ARCHITECTURE "PanopticFPNExt". In training, the
        records of DATASETS.TRAIN and DATASETS.TEST are checked first (``check_datasets``,
        PANOPTIC_FPN_EXT.DATA_CHECK), so that a bad file stops the run before it starts.

        Raises:
            ValueError: INPUT.MASK_FORMAT is not "bitmask"; a class count of the model differs
                from a dataset of DATASETS.TRAIN/TEST (``check_class_counts``).
            PanopticDataError: a dataset has bad files.
        """
        check_class_counts(cfg, *cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
        if cfg.INPUT.MASK_FORMAT != "bitmask":
            raise ValueError(
                f"INPUT.MASK_FORMAT = {cfg.INPUT.MASK_FORMAT!r}: PanopticDatasetMapper makes "
                "instance masks from panoptic PNGs and needs INPUT.MASK_FORMAT 'bitmask'"
            )
        check_datasets(cfg, (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if is_train else ())
        augmentations = utils.build_augmentation(cfg, is_train)  # [resize, flip if training]
        if is_train and cfg.INPUT.CROP.ENABLED:
            augmentations.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_stuff_classes": _num_stuff_classes(cfg),
            "compact_sem_seg": cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt",
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
        segments = read_segment_indices(record)
        semantic, thing_class = _segment_tables(
            segments.segment_ids, record, self.ignore_value, self.num_stuff_classes
        )
        transforms = self.augmentations(aug_input)
        index_map = _transform_index_map(transforms, segments.index_map)
        record["image"] = _image_tensor(aug_input.image)
        record["sem_seg"], record["instances"] = _targets(
            index_map, semantic, thing_class, self.compact_sem_seg
        )
        return record
