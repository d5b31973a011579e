"""Segment ids to histogram indices: the general route on any device, and the CPU's id tables.

COCO-panoptic segment ids are arbitrary 24-bit values (``id = R + 256 G + 256² B`` of a PNG
pixel); models usually number their segments 1..K. Each pixel's id is replaced by the position of
its segment in ``segments_info`` (0 for void, the last index for ids not listed):

* on any device, :func:`segment_index_map` builds an index map with torch, which
  :func:`joint_histogram` counts (the route for predictions on a GPU, and for images whose
  histogram does not fit the CPU route);
* on the CPU, compiled code looks ids up in a small hash table per image instead, while it counts
  (see :mod:`.id_table` and :mod:`.counting`).
"""

from typing import Optional, Union

import numpy as np
import torch

from ..data.panoptic_io import VOID_ID
from .png import FilteredPng, decode_rgba

__all__ = [
    "MAX_SEGMENT_ID",
    "GroundTruth",
    "ground_truth_ids",
    "joint_histogram",
    "rgba_ids",
    "segment_index_map",
]

# Segment ids must fit the 24 bits of a COCO-panoptic PNG (id = R + 256 G + 256² B).
MAX_SEGMENT_ID = 256**3 - 1
# A GT id map: an integer tensor (H, W), a COCO-panoptic PNG's pixels as uint8 RGBA (H, W, 4), or
# the PNG itself, not yet unfiltered (see .pq.image_pq_statistics).
GroundTruth = Union[torch.Tensor, np.ndarray, FilteredPng]
# Segment ids above 2^16 are looked up by the 16 bits (id >> shift) & _SLOT_MASK, for the first of
# these shifts that separates the ids of the image (see segment_index_map).
_SLOT_MASK = 0xFFFF
_SLOT_SHIFTS = (0, 8, 4)


def _index_by_table(flat: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Indices of ids below 2^16: ``table[id + 1]``, with every negative id in the first entry and
    every id above the largest known one in the last."""
    top = int(known.max())
    table = torch.full((top + 3,), len(known), dtype=torch.int32)
    table[known + 1] = torch.arange(len(known), dtype=torch.int32)
    return table.to(flat.device).index_select(0, flat.clamp(-1, top + 1) + 1)


def _slot_shift(known: torch.Tensor) -> Optional[int]:
    """A shift s such that ``(id >> s) & 0xFFFF`` differs between all ``known`` ids, or None."""
    for shift in _SLOT_SHIFTS:
        if len(torch.unique((known >> shift) & _SLOT_MASK)) == len(known):
            return shift
    return None


def _index_by_hash(flat: torch.Tensor, known: torch.Tensor, shift: int) -> torch.Tensor:
    """Indices through a table of 2^16 slots, ``(id >> shift) & 0xFFFF``; each pixel's id is
    compared with its slot's."""
    slots = (known >> shift) & _SLOT_MASK
    id_of_slot = torch.full((_SLOT_MASK + 1,), -1, dtype=flat.dtype)
    id_of_slot[slots] = known.to(flat.dtype)
    index_of_slot = torch.full((_SLOT_MASK + 1,), len(known), dtype=torch.int32)
    index_of_slot[slots] = torch.arange(len(known), dtype=torch.int32)
    slot = (flat >> shift if shift else flat) & _SLOT_MASK
    found = id_of_slot.to(flat.device).index_select(0, slot) == flat
    return torch.where(found, index_of_slot.to(flat.device).index_select(0, slot), len(known))


def _index_by_search(flat: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Indices by binary search among the sorted known ids."""
    ordered, order = torch.sort(known)
    ordered = ordered.to(device=flat.device, dtype=flat.dtype)
    slot = torch.searchsorted(ordered, flat).clamp_(max=len(known) - 1)
    found = ordered.index_select(0, slot) == flat
    index = order.to(device=flat.device, dtype=torch.int32).index_select(0, slot)
    return torch.where(found, index, len(known))


def segment_index_map(id_map: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Replace each segment id of an id map by its position in ``segment_ids``, on any device.

    Ids below 2^16 are looked up directly in a table; larger ones in a table of 2^16 slots indexed
    by 16 of their bits, chosen so that the listed ids and void fall in distinct slots, or, when no
    such bits exist, by binary search.

    Args:
        id_map: int32 or int64 (H, W), segment id per pixel, 0 = void.
        segment_ids: int64 (K,), distinct ids in [1, MAX_SEGMENT_ID], on the CPU.
    Returns:
        int32 (H, W) on ``id_map``'s device: 0 for void, ``k + 1`` for ``segment_ids[k]``,
        ``K + 1`` for any other id (negative ones included).
    """
    flat = id_map.reshape(-1)
    known = torch.cat([segment_ids.new_tensor([VOID_ID]), segment_ids])  # index i: known[i]
    if int(known.max()) < _SLOT_MASK:
        return _index_by_table(flat, known).view(id_map.shape)
    shift = _slot_shift(known)
    if shift is None:
        return _index_by_search(flat, known).view(id_map.shape)
    return _index_by_hash(flat, known, shift).view(id_map.shape)


def joint_histogram(
    gt_index: torch.Tensor, num_gt: int, pred_index: torch.Tensor, num_pred: int
) -> torch.Tensor:
    """Pixel counts of every (GT segment, predicted segment) pair, on the index maps' device.

    Args:
        gt_index: int32 (H, W), values in [0, num_gt + 1] (see :func:`segment_index_map`).
        pred_index: int32 (H, W), values in [0, num_pred + 1].
    Returns:
        int64 (num_gt + 2, num_pred + 2): entry [i, j] counts the pixels with GT index i and
        predicted index j; row/column 0 is void, the last row/column unknown ids.
    """
    width = num_pred + 2
    # int32 keys unless there are too many pairs of segments for them (half the memory traffic)
    dtype = torch.int32 if (num_gt + 2) * width <= torch.iinfo(torch.int32).max else torch.int64
    key = pred_index.to(dtype).add(gt_index.to(dtype), alpha=width).view(-1)
    return torch.bincount(key, minlength=(num_gt + 2) * width).view(num_gt + 2, width)


def rgba_ids(rgba: np.ndarray) -> np.ndarray:
    """The segment ids of a COCO-panoptic PNG decoded as RGBA, modulo 2^24.

    Args:
        rgba: uint8 (H, W, 4), C-contiguous: R, G, B as in the PNG (``id = R + 256 G + 256² B``),
            any alpha.
    Returns:
        int32 (H, W), a view: each pixel's 4 bytes read as a little-endian word,
        ``id + 2^24 A`` modulo 2^32; with A = 255, ``id - 2^24``.
    """
    return rgba.view("<i4")[..., 0]


def ground_truth_ids(gt_id_map: GroundTruth) -> torch.Tensor:
    """A GT id map in any of its forms (see :data:`GroundTruth`) as an integer tensor (H, W):
    the tensor itself, or int32 ids of RGBA pixels or of a PNG, on the CPU."""
    if isinstance(gt_id_map, torch.Tensor):
        return gt_id_map
    if isinstance(gt_id_map, FilteredPng):
        gt_id_map = decode_rgba(gt_id_map)
    return torch.from_numpy(rgba_ids(gt_id_map) & MAX_SEGMENT_ID)
